"""Commands of the analysis stage: aggregate, correlate, figures, summarize, trajectory-metrics."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger("diffusability.analysis")


def register(subparsers) -> None:
    from ..cli import json_spec

    p = subparsers.add_parser("aggregate", help="per-job rows → results/tables/*.parquet")
    p.add_argument("--spec", type=json_spec, required=True,
                   help='{"tokenizers": {name: {family, regularizer, ...}}, "config": {...}}')
    p.add_argument("--tokenizer-configs", nargs="*", default=[], metavar="JSON",
                   help="each tokenizer's config.json (its real architecture and latent shape)")
    for name in ("reconstruction", "metrics", "tokenizer-metrics", "model-metrics", "generation", "trajectory",
                 "untrained"):
        p.add_argument(f"--{name}", nargs="*", default=[], metavar="PARQUET")
    p.add_argument("--out-dir", type=Path, required=True)
    p.set_defaults(func=run_aggregate)

    p = subparsers.add_parser("correlate", help="Pearson/Spearman r and two-metric R² against generation FD")
    p.add_argument("--tables", type=Path, required=True, help="directory of the aggregated tables")
    p.add_argument("--spec", type=json_spec, default={}, help='{"target": "fd", "methods": ["pearson", ...]}')
    p.add_argument("--out-correlations", type=Path, required=True)
    p.add_argument("--out-regressions", type=Path, required=True)
    p.set_defaults(func=run_correlate)

    p = subparsers.add_parser("figures", help="scatter plots, correlation heat map, trained vs untrained, "
                                                 "trajectory length ratios with VIV(t)")
    p.add_argument("--tables", type=Path, required=True)
    p.add_argument("--spec", type=json_spec, default={})
    p.add_argument("--out-dir", type=Path, required=True)
    p.set_defaults(func=run_figures)

    p = subparsers.add_parser("summarize", help="a readable Markdown summary of the tables")
    p.add_argument("--tables", type=Path, required=True)
    p.add_argument("--spec", type=json_spec, default={})
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run_summarize)

    p = subparsers.add_parser("trajectory-metrics",
                              help="local straightness, global efficiency, per-segment length ratio")
    p.add_argument("--trajectories", type=Path, required=True,
                   help=".safetensors with `trajectory` (K+1, N, C, H, W) and `times` (K+1,)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run_trajectory_metrics)


def _tables(directory: Path, names) -> dict:
    from ..io import read_parquet

    return {name: read_parquet(directory / f"{name}.parquet") for name in names}


def run_aggregate(args: argparse.Namespace) -> None:
    from ..io import provenance, write_parquet
    from . import tables

    from ..errors import require

    require(isinstance(args.spec.get("tokenizers"), dict),
            "--spec: 'tokenizers' (the study's tokenizer entries by name) is required")
    meta = provenance(args.spec.get("config"))
    frames = {
        "tokenizers": tables.tokenizer_table(args.spec["tokenizers"], args.tokenizer_configs),
        "reconstruction": tables.reconstruction_table(args.reconstruction),
        "metrics": tables.metrics_table(args.metrics, args.tokenizer_metrics, args.model_metrics),
        "generation": tables.generation_table(args.generation, args.trajectory, args.untrained),
    }
    for name, frame in frames.items():
        write_parquet(frame, args.out_dir / f"{name}.parquet", meta)
        log.info("%s: %d rows", name, len(frame))


def _per_backbone(metrics, generation):
    """Yield (backbone, metric rows, generation rows) per backbone of the generation table.

    Model-based rows (e.g. ``fi_model``) carry the backbone they were measured on; a backbone's
    correlations use its own such rows next to the rows of the tokenizer alone (backbone "").
    """
    backbone = metrics["backbone"] if "backbone" in metrics.columns else None
    trained = sorted(generation.loc[generation["model"] == "trained", "backbone"].unique())
    if not trained:  # nothing to correlate with: let correlate() say so
        yield None, metrics, generation
    for name in trained:
        rows = metrics if backbone is None else metrics[backbone.isin(["", name])]
        yield name, rows, generation[generation["backbone"] == name]


def run_correlate(args: argparse.Namespace) -> None:
    import pandas as pd

    from ..io import parquet_metadata, write_parquet
    from . import correlations as corr

    t = _tables(args.tables, ("tokenizers", "reconstruction", "metrics", "generation"))
    target = args.spec.get("target", "fd")
    methods = tuple(args.spec.get("methods", ("pearson", "spearman")))
    families = t["tokenizers"].set_index("tokenizer")["family"]
    directions = corr.directions(t["metrics"], t["reconstruction"])
    correlations, regressions = [], []
    for backbone, metrics, generation in _per_backbone(t["metrics"], t["generation"]):
        proxies = corr.proxy_matrix(metrics, t["reconstruction"])
        correlations.append(corr.correlate(proxies, generation, families, target, methods, directions))
        regressions.append(corr.pairwise_regressions(proxies, generation, families, target))
    correlations, regressions = pd.concat(correlations, ignore_index=True), pd.concat(regressions, ignore_index=True)
    meta = parquet_metadata(args.tables / "generation.parquet")
    write_parquet(correlations, args.out_correlations, meta)
    write_parquet(regressions, args.out_regressions, meta)
    log.info("correlations: %d rows, regressions: %d rows", len(correlations), len(regressions))


def run_figures(args: argparse.Namespace) -> None:
    from . import correlations as corr
    from . import figures

    t = _tables(args.tables, ("tokenizers", "reconstruction", "metrics", "generation", "correlations"))
    target = args.spec.get("target", "fd")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    proxies = corr.proxy_matrix(t["metrics"], t["reconstruction"])
    written = figures.scatter_figures(proxies, t["generation"], t["correlations"], target, args.out_dir)
    written.append(figures.trained_vs_untrained(t["reconstruction"], t["generation"], target, args.out_dir))
    # ρ_k of the recorded trajectories, with VIV(t) overlaid where the metrics table has it (001's Fig. 10)
    written += figures.length_ratio_figures(t["generation"], t["metrics"], args.out_dir)
    heatmap = figures.correlation_heatmap(t["correlations"], args.out_dir)
    if heatmap:
        written.append(heatmap)
    log.info("wrote %d figures to %s", len(written), args.out_dir)


def run_summarize(args: argparse.Namespace) -> None:
    from ..io import atomic_path, parquet_metadata
    from . import layout
    from .summary import summarize

    t = _tables(args.tables, layout.TABLES)
    text = summarize(t, args.spec.get("target", "fd"), parquet_metadata(args.tables / "generation.parquet"))
    with atomic_path(args.out) as tmp:
        tmp.write_text(text + "\n")


def run_trajectory_metrics(args: argparse.Namespace) -> None:
    import json

    import pandas as pd

    from ..io import load_tensors, write_parquet, provenance
    from ..metrics.trajectory import trajectory_metrics

    start = time.perf_counter()
    data = load_tensors(args.trajectories, ["trajectory", "times"])
    result = trajectory_metrics(data["trajectory"], data["times"])
    n = int(data["trajectory"].shape[1])
    seconds = time.perf_counter() - start
    rows = [
        {"metric": "local_straightness", "value": float(result["local_straightness"].double().mean()),
         "direction": "higher", "params": "{}", "n": n, "seconds": seconds},
        {"metric": "global_efficiency", "value": float(result["global_efficiency"].double().mean()),
         "direction": "higher", "params": "{}", "n": n, "seconds": seconds},
    ]
    times = data["times"].double()
    ratio = result["length_ratio"].double().mean(dim=0)
    for k, value in enumerate(ratio.tolist()):
        rows.append({"metric": "length_ratio", "value": value, "direction": "",
                     "params": json.dumps({"segment": k + 1, "t_start": float(times[k]), "t_end": float(times[k + 1])}),
                     "n": n, "seconds": seconds})
    write_parquet(pd.DataFrame(rows), args.out, provenance())
