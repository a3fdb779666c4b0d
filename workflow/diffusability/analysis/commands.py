"""Commands of the analysis stage: aggregate, correlate, figures, summarize."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..workflow import layout

log = logging.getLogger("diffusability.analysis")



def register(subparsers) -> None:
    from ..specs import json_spec

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

    p = subparsers.add_parser("correlate", help="Pearson/Spearman r (Fisher-z and bootstrap intervals), two-metric "
                                                   "R², perspectives, guidance optima, seed noise")
    p.add_argument("--tables", type=Path, required=True, help="directory of the aggregated tables")
    p.add_argument("--spec", type=json_spec, default={},
                   help='the analysis config: {"target": "fd", "methods": ["pearson", ...], "secondary_targets": '
                        '["is", "fdr6"], "bootstrap": 2000, "guidance_range": [1.5, 2.0]}')
    p.add_argument("--out-correlations", type=Path, required=True)
    p.add_argument("--out-regressions", type=Path, required=True)
    for name in layout.ANALYSIS_TABLES:
        p.add_argument(f"--out-{name.replace('_', '-')}", type=Path, default=None,
                       help=f"(default: {name}.parquet next to --out-correlations)")
    p.set_defaults(func=run_correlate)

    p = subparsers.add_parser("figures", help="the study's figures: perspectives (Figs. 4–6), guidance (7, 25), "
                                                 "pairs (8), transport (9), length ratios with VIV(t) (10), "
                                                 "scatter plots, heat maps, intervals, trained vs untrained")
    p.add_argument("--tables", type=Path, required=True)
    p.add_argument("--spec", type=json_spec, default={})
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--jobs", type=_positive_int, default=1,
                   help="processes that draw the figures (default 1; the files do not depend on it)")
    p.set_defaults(func=run_figures)

    p = subparsers.add_parser("summarize", help="a readable Markdown summary of the tables")
    p.add_argument("--tables", type=Path, required=True)
    p.add_argument("--spec", type=json_spec, default={})
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run_summarize)


def _tables(directory: Path, names, columns: dict | None = None) -> dict:
    """The study tables ``names`` of ``directory``, each checked for the columns the analysis reads."""
    from .tables import read_study_table

    return {name: read_study_table(directory, name, (columns or {}).get(name, ())) for name in names}


def run_aggregate(args: argparse.Namespace) -> None:
    from ..io import provenance, write_parquet
    from . import tables

    from ..errors import require

    require(isinstance(args.spec.get("tokenizers"), dict),
            "--spec: 'tokenizers' (the study's tokenizer entries by name) is required")
    meta = provenance(args.spec.get("config"))
    # a sample set's FDr rows arrive among its generation rows
    representation = [path for path in args.generation if layout.is_kind("representation", path)]
    generation = [path for path in args.generation if path not in representation]
    frames = {
        "tokenizers": tables.tokenizer_table(args.spec["tokenizers"], args.tokenizer_configs),
        "reconstruction": tables.reconstruction_table(layout.keyed("reconstruction", args.reconstruction)),
        "metrics": tables.metrics_table(layout.keyed("metrics", args.metrics),
                                        layout.keyed("tokenizer_metrics", args.tokenizer_metrics),
                                        layout.keyed("model_metrics", args.model_metrics)),
        "generation": tables.generation_table(layout.keyed("generation", generation),
                                              layout.keyed("representation", representation),
                                              layout.keyed("trajectory", args.trajectory),
                                              layout.keyed("untrained", args.untrained)),
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


def analysis_settings(spec: dict) -> dict:
    """The analysis config with its defaults (workflow/schemas/config.schema.yaml ``analysis``)."""
    import math

    from . import correlations as corr
    from .guidance import GUIDANCE_RANGE

    from ..errors import require

    def strings(key, default):
        value = spec.get(key, default)
        require(isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value),
                f"analysis.{key}: expected a list of names, got {value!r}")
        return tuple(value)

    target, draws = spec.get("target", "fd"), spec.get("bootstrap", corr.BOOTSTRAP_DRAWS)
    span = spec.get("guidance_range", GUIDANCE_RANGE)
    require(isinstance(target, str), f"analysis.target: expected a metric name, got {target!r}")
    require(isinstance(draws, int) and not isinstance(draws, bool) and draws >= 0,
            f"analysis.bootstrap: expected an integer >= 0, got {draws!r}")
    require(isinstance(span, (list, tuple)) and len(span) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in span),
            f"analysis.guidance_range: expected two finite numbers [low, high], got {span!r}")
    settings = {"target": target, "methods": strings("methods", ("pearson", "spearman")),
                "secondary_targets": strings("secondary_targets", corr.SECONDARY_TARGETS),
                "bootstrap": draws, "guidance_range": tuple(float(v) for v in span)}
    low, high = settings["guidance_range"]
    require(low <= high, f"analysis.guidance_range: [{low:g}, {high:g}] is not an interval (low > high)")
    return settings


def run_correlate(args: argparse.Namespace) -> None:
    import pandas as pd

    from ..io import parquet_metadata, write_parquet
    from . import correlations as corr
    from . import guidance
    from . import perspectives as persp

    t = _tables(args.tables, ("tokenizers", "reconstruction", "metrics", "generation"))
    settings = analysis_settings(args.spec)
    target, methods, draws = settings["target"], settings["methods"], settings["bootstrap"]
    families = t["tokenizers"].set_index("tokenizer")["family"]
    directions = corr.directions(t["metrics"], t["reconstruction"])
    targets = corr.available_targets(t["generation"], target, settings["secondary_targets"])
    optima = guidance.optima(t["generation"], families, targets, settings["guidance_range"])
    correlations, regressions, optimum, per_backbone = [], [], [], []
    for backbone, metrics, generation in _per_backbone(t["metrics"], t["generation"]):
        proxies = corr.proxy_matrix(metrics, t["reconstruction"])
        correlations.append(corr.correlate(proxies, generation, families, target, methods, directions,
                                           settings["secondary_targets"], draws))
        regressions.append(corr.pairwise_regressions(proxies, generation, families, target))
        rows = optima if backbone is None else optima[optima["backbone"] == backbone]
        optimum.append(guidance.optimum_correlations(proxies, rows, generation, methods, directions, draws))
        per_backbone.append((proxies, generation))
    correlations, regressions = pd.concat(correlations, ignore_index=True), pd.concat(regressions, ignore_index=True)
    perspectives = persp.perspective_table(correlations)
    pairs = pd.concat([corr.perspective_pairs(proxies, generation, families, perspectives, target)
                       for proxies, generation in per_backbone], ignore_index=True)
    outputs = {
        "perspectives": perspectives, "perspective_pairs": pairs, "guidance_optima": optima,
        "guidance_correlations": pd.concat(optimum, ignore_index=True),
        "seeds": corr.seed_noise(t["generation"], families, targets),
    }
    meta = parquet_metadata(args.tables / "generation.parquet")
    write_parquet(correlations, args.out_correlations, meta)
    write_parquet(regressions, args.out_regressions, meta)
    for name, frame in outputs.items():  # the keys are layout.ANALYSIS_TABLES
        path = getattr(args, f"out_{name}") or args.out_correlations.parent / f"{name}.parquet"
        write_parquet(frame, path, meta)
    log.info("correlations: %d rows, regressions: %d rows, perspectives: %d rows", len(correlations),
             len(regressions), len(perspectives))


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def run_figures(args: argparse.Namespace) -> None:
    from . import figures

    # tables of an older run (or of a study without them) may be missing: their figures are then left out
    from ..errors import require

    require(args.tables.is_dir(), f"{args.tables}: tables folder not found")
    t = _tables(args.tables, [name for name in layout.TABLES if (args.tables / f"{name}.parquet").is_file()])
    written = figures.all_figures(t, args.spec, args.out_dir, jobs=args.jobs)
    log.info("wrote %d figures to %s", len(written), args.out_dir)


def run_summarize(args: argparse.Namespace) -> None:
    from ..io import atomic_path, parquet_metadata
    from .summary import summarize

    # the summary's tokenizer section lists these columns
    t = _tables(args.tables, layout.TABLES, {"tokenizers": ("regularizer", "kl_weight", "latent_channels",
                                                           "downsample")})
    text = summarize(t, args.spec.get("target", "fd"), parquet_metadata(args.tables / "generation.parquet"))
    with atomic_path(args.out) as tmp:
        tmp.write_text(text + "\n")
