"""``diffusability predictions`` (the study's own out-of-cluster test) and ``diffusability predict`` (a new tokenizer).

* ``predictions --tables DIR --spec JSON --out-predictions P --out-scores S --out-figure PNG``: the
  leave-one-cluster-out predictions of the generation target (``spec.target``, default ``fd``) from the
  study's latent proxies, every single- and two-proxy OLS model, their scores and the nested
  selection (see :mod:`.predict`), plus a predicted-vs-observed figure. A study too small for the test
  gets empty tables and a figure that says so (the workflow goes on).
* ``predict LATENTS --study DIR --out OUT.parquet``: LATENTS as for ``diffusability metrics``
  (``latents`` (N, C, H, W), ``labels`` (N,), ``masks`` (N, H, W) at the latent grid). Per backbone and
  guidance scale it takes the model with the best out-of-cluster R² on the study, computes that model's
  proxies on LATENTS with the metric registry and the study's own recorded metric parameters, fits the
  model on all the study's tokenizers of the same latent shape, and writes the predicted target with
  its OLS prediction interval and the rank it would take among the study's tokenizers.

Only proxies computable from latents alone are candidates (the registry's metrics without the training
latents; curves left out): reconstruction, encoder- and model-based rows need networks LATENTS lacks.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
from pathlib import Path

log = logging.getLogger("diffusability.analysis")

STUDY_TABLES = ("tokenizers", "metrics", "generation")


def register(subparsers) -> None:
    """Add the ``predictions`` and ``predict`` subcommands."""
    from ..specs import json_spec

    p = subparsers.add_parser("predictions", help="leave-one-cluster-out prediction of generation FD from latent "
                                                   "proxies: predictions, scores, figure")
    p.add_argument("--tables", type=Path, required=True, help="directory of the aggregated tables")
    p.add_argument("--spec", type=json_spec, default={}, help='{"target": "fd"} (the analysis config)')
    p.add_argument("--out-predictions", type=Path, required=True)
    p.add_argument("--out-scores", type=Path, required=True)
    p.add_argument("--out-figure", type=Path, required=True)
    p.set_defaults(func=run_predictions)

    q = subparsers.add_parser("predict", help="predict a new tokenizer's generation FD from its latents and a study",
                              description="Predict the generation target of a new tokenizer from its latents, "
                                          "with the study's best out-of-cluster model and a prediction interval.")
    q.add_argument("latents", help=".npz or .safetensors with latents (N,C,H,W), labels (N,), masks (N,H,W)")
    q.add_argument("--study", type=Path, required=True,
                   help="a study's results/tables (tokenizers, metrics, generation .parquet)")
    q.add_argument("--out", type=Path, required=True, help="output Parquet table")
    q.add_argument("--name", default=None, help="the new tokenizer's name (default: the file name's stem)")
    q.add_argument("--target", default="fd", help="generation metric to predict (default fd)")
    q.add_argument("--normalize", choices=("none", "per-channel"), default="per-channel",
                   help="per-channel: standardise with the input's own mean/std (default); none: as given")
    q.add_argument("--device", default="cpu", help="torch device of the metrics (default cpu)")
    q.set_defaults(func=run_predict)


# --------------------------------------------------------------------------- the study


def latent_only_proxy(name: str) -> bool:
    """Whether a metrics-table row name is a scalar proxy of the latents alone (``predict`` can compute it)."""
    from ..metrics.registry import METRICS, OPT_IN, requirements

    if name.startswith("sec_r"):
        return True
    return name in METRICS and name not in OPT_IN and "train" not in requirements(name)


def latent_proxies(metrics):
    """Wide table tokenizer × latent-only proxy (plain metric names), proportional duplicates dropped."""
    from .correlations import drop_proportional_duplicates, scalar_rows

    rows = scalar_rows(metrics)
    if "backbone" in rows.columns:
        rows = rows[rows["backbone"].fillna("") == ""]
    rows = rows[rows["metric"].map(latent_only_proxy)]
    wide = rows.pivot_table(index="tokenizer", columns="metric", values="value", aggfunc="first")
    return drop_proportional_duplicates(wide.sort_index())


def latent_shapes(tokenizers, path):
    """{tokenizer: (C, h, w)} from the table's latent_channels, downsample and image_size (h = image_size / downsample)."""
    from ..errors import require

    missing = [c for c in ("latent_channels", "downsample", "image_size") if c not in tokenizers.columns]
    require(not missing, f"{path}: records no latent shape (missing columns {missing}); rerun the aggregate step "
                         "of a study made with this version")
    shapes = [(int(c), int(s) // int(f), int(s) // int(f))
              for c, f, s in zip(tokenizers["latent_channels"], tokenizers["downsample"], tokenizers["image_size"])]
    return dict(zip(tokenizers["tokenizer"], shapes))


def _read(directory: Path) -> dict:
    from ..io import read_parquet

    return {name: read_parquet(directory / f"{name}.parquet") for name in STUDY_TABLES}


def run_predictions(args: argparse.Namespace) -> None:
    from ..io import parquet_metadata, write_parquet
    from . import predict

    t = _read(args.tables)
    target = args.spec.get("target", "fd")
    predictions, scores = predict.evaluate_study(latent_proxies(t["metrics"]), predict.target_rows(t["generation"], target),
                                                 predict.tokenizer_cluster(t["tokenizers"]), target)
    meta = parquet_metadata(args.tables / "generation.parquet")
    write_parquet(predictions, args.out_predictions, meta)
    write_parquet(scores, args.out_scores, meta)
    prediction_figure(predictions, scores, target, args.out_figure)
    log.info("predictions: %d rows, scores: %d models", len(predictions), len(scores))


# --------------------------------------------------------------------------- a new tokenizer


def check_study(targets, clusters, tables: Path) -> None:
    """DiffusabilityError unless every (backbone, scale) has ≥ MIN_TOKENIZERS tokenizers in ≥ MIN_CLUSTERS clusters."""
    from ..errors import require
    from .predict import MIN_CLUSTERS, MIN_TOKENIZERS

    for (backbone, cfg_scale), rows in targets.groupby(["backbone", "cfg_scale"]):
        n_clusters = clusters.reindex(rows["tokenizer"]).nunique()
        require(len(rows) >= MIN_TOKENIZERS and n_clusters >= MIN_CLUSTERS,
                f"{tables / 'generation.parquet'}: {backbone}, cfg {cfg_scale:g}: {len(rows)} tokenizers in "
                f"{n_clusters} clusters ({tables / 'tokenizers.parquet'}); a leave-one-cluster-out predictor "
                f"needs at least {MIN_TOKENIZERS} tokenizers in {MIN_CLUSTERS} clusters")


def same_shape_tokenizers(tokenizers, shape: tuple, tables: Path, source: str) -> list[str]:
    """The study's tokenizers whose latents have ``shape`` (C, h, w); DiffusabilityError naming both when none."""
    from ..errors import require

    shapes = latent_shapes(tokenizers, tables / "tokenizers.parquet")
    matching = [tok for tok, s in shapes.items() if s == tuple(shape)]
    require(bool(matching), f"{source}: latents of shape {tuple(shape)} (C, H, W) do not match the study's latent "
                            f"shape(s) {sorted(set(shapes))} ({tables / 'tokenizers.parquet'})")
    if len(matching) < len(shapes):
        log.info("predict: %d of %d study tokenizers have latents of shape %s; the others are left out",
                 len(matching), len(shapes), tuple(shape))
    return matching


def metric_name(proxy: str) -> str:
    """The registry metric that yields a proxy row (the SEC sweep rows ``sec_r*`` come from ``sec``)."""
    return "sec" if proxy.startswith("sec_r") else proxy


def study_params(metrics, proxies) -> dict:
    """``{computation: {keyword: value}}``: the parameters the study recorded for these proxies' rows.

    The recorded ``params`` JSON is the full effective set; keys that are not the function's keyword
    arguments (e.g. lnc's ``pooling``, which follows from the masks) are left to the registry.
    """
    from ..metrics.registry import COMPUTATIONS, METRICS

    params = {}
    for proxy in proxies:
        computation = COMPUTATIONS[METRICS[metric_name(proxy)].computation]
        record = json.loads(metrics.loc[metrics["metric"] == proxy, "params"].iloc[0])
        accepted = inspect.signature(computation.signature_of()).parameters
        params[computation.name] = {k: v for k, v in record.items() if k in accepted}
    return params


def new_proxies(inputs: tuple, path: str, proxies: list[str], study_metrics, normalize: str,
                device: str) -> dict[str, float]:
    """The proxies of the new latents, computed with the study's parameters; {proxy: value}.

    ``inputs``: (latents, labels, masks) of :func:`~diffusability.latent_metrics.inputs.read_latent_inputs`.
    A recorded-parameter difference (e.g. lnc pooled over all tokens because LATENTS has no masks, where
    the study pooled the foreground) is a DiffusabilityError naming LATENTS: the values would not be comparable.
    """
    from ..errors import DiffusabilityError, require
    from ..metrics.normalization import channel_stats, normalize_latents
    from ..metrics.registry import compute_metrics

    latents, labels, masks = inputs
    if normalize == "per-channel":
        latents = normalize_latents(latents, *channel_stats(latents))
    names = sorted({metric_name(p) for p in proxies})
    try:
        rows = compute_metrics(latents, labels, masks, names=names, params=study_params(study_metrics, proxies),
                               device=device)
    except DiffusabilityError as exc:
        raise DiffusabilityError(f"{path}: {exc}") from None
    values = {}
    for proxy in proxies:
        row = rows[rows["metric"] == proxy]
        require(len(row) == 1, f"{path}: the metric registry gave no {proxy!r} row")
        ours = json.loads(row["params"].iloc[0])
        theirs = json.loads(study_metrics.loc[study_metrics["metric"] == proxy, "params"].iloc[0])
        differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
        require(not differ, f"{path}: {proxy} parameters differ from the study's on {differ} "
                            f"(here {[ours.get(k) for k in differ]}, study {[theirs.get(k) for k in differ]})")
        study_n = study_metrics.loc[study_metrics["metric"] == proxy, "n"]
        if len(study_n) and int(row["n"].iloc[0]) != int(study_n.iloc[0]):
            log.warning("predict: %s of %s uses n = %d, the study's n = %d (sample-size dependent metrics shift)",
                        proxy, path, int(row["n"].iloc[0]), int(study_n.iloc[0]))
        values[proxy] = float(row["value"].iloc[0])
    return values


def prediction_rows(name: str, scores, proxies, targets, values: dict, direction: str) -> list[dict]:
    """One output row per (backbone, scale): the selected model refitted on the study, applied to ``values``."""
    from . import predict

    rows = []
    for _, chosen in scores[scores["selected"]].iterrows():
        model = [p for p in (chosen["proxy_1"], chosen["proxy_2"]) if p]
        group = targets[(targets["backbone"] == chosen["backbone"]) & (targets["cfg_scale"] == chosen["cfg_scale"])]
        y = group.set_index("tokenizer")["value"]
        X = proxies.reindex(y.index)[model].to_numpy(float)
        predicted, lower, upper = predict.predict_new(X, y.to_numpy(float), [values[p] for p in model])
        best, worst = (lower, upper) if direction == "lower" else (upper, lower)
        nested = scores[(scores["backbone"] == chosen["backbone"]) & (scores["cfg_scale"] == chosen["cfg_scale"])
                        & (scores["model"] == predict.NESTED)]
        rows.append({"tokenizer": name, "backbone": chosen["backbone"], "cfg_scale": float(chosen["cfg_scale"]),
                     "target": chosen["target"], "direction": direction, "model": chosen["model"],
                     "proxies": json.dumps({p: values[p] for p in model}), "predicted": predicted, "lower": lower,
                     "upper": upper, "level": predict.LEVEL,
                     "rank": predict.rank_among(predicted, y, direction),
                     "rank_best": predict.rank_among(best, y, direction),
                     "rank_worst": predict.rank_among(worst, y, direction), "n_study": len(y),
                     "r2_oc": chosen["r2_oc"], "coverage": chosen["coverage"],
                     "r2_oc_nested": nested["r2_oc"].iloc[0] if len(nested) else float("nan")})
    return rows


def run_predict(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..errors import require
    from ..io import load_arrays, provenance, write_parquet
    from ..latent_metrics.inputs import read_latent_inputs
    from . import predict

    t = _read(args.study)
    inputs = read_latent_inputs(load_arrays(args.latents), str(args.latents))
    keep = same_shape_tokenizers(t["tokenizers"], tuple(inputs[0].shape[1:]), args.study, str(args.latents))
    targets = predict.target_rows(t["generation"], args.target)
    targets = targets[targets["tokenizer"].isin(keep)]
    clusters = predict.tokenizer_cluster(t["tokenizers"])
    check_study(targets, clusters, args.study)
    proxies = latent_proxies(t["metrics"][t["metrics"]["tokenizer"].isin(keep)])
    _, scores = predict.evaluate_study(proxies, targets, clusters, args.target)
    require(bool(scores["selected"].any()), f"{args.study / 'generation.parquet'}: no proxy model can be fitted in "
                                            "every leave-one-cluster-out fold (too few tokenizers per cluster)")
    needed = sorted({p for col in ("proxy_1", "proxy_2") for p in scores.loc[scores["selected"], col] if p})
    values = new_proxies(inputs, str(args.latents), needed, t["metrics"][t["metrics"]["tokenizer"].isin(keep)],
                         args.normalize, args.device)
    name = args.name or Path(args.latents).stem
    rows = prediction_rows(name, scores, proxies, targets, values, predict.target_direction(t["generation"], args.target))
    write_parquet(pd.DataFrame(rows), args.out, provenance({"latents": str(args.latents), "study": str(args.study),
                                                            "target": args.target, "normalize": args.normalize}))
    for row in rows:
        log.info("predict: %s %s cfg %g: %s = %.4g [%.4g, %.4g] (rank %d of %d; model %s, r2_oc %.2f)", name,
                 row["backbone"], row["cfg_scale"], row["target"], row["predicted"], row["lower"], row["upper"],
                 row["rank"], row["n_study"] + 1, row["model"], row["r2_oc"])
    return 0


# --------------------------------------------------------------------------- figure


def _figure_rows(predictions, backbone):
    """The honest predictions of a backbone: the nested selection's when there are some, else the selected model's."""
    from .predict import NESTED

    rows = predictions[predictions["backbone"] == backbone]
    nested = rows[rows["model"] == NESTED]
    return (nested, "nested selection") if len(nested) else (rows[rows["selected"]], "best model (not nested)")


def prediction_figure(predictions, scores, target: str, path: Path) -> Path:
    """Predicted (held out) vs observed target: one panel per backbone, colour = cluster, marker = guidance scale,
    bars = the prediction intervals; the dotted line is predicted = observed."""
    from ..io import atomic_path
    from .figures import _pyplot

    plt = _pyplot()
    backbones = sorted(predictions["backbone"].unique())
    fig, axes = plt.subplots(1, max(1, len(backbones)), figsize=(4.4 * max(1, len(backbones)), 4.0), squeeze=False)
    if not backbones:
        axes[0][0].text(0.5, 0.5, "no leave-one-cluster-out test:\ntoo few tokenizers or clusters",
                        ha="center", va="center", fontsize=9)
        axes[0][0].set_axis_off()
    clusters = sorted(predictions["held_out_group"].unique())
    colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(clusters)}
    markers = dict(zip(sorted(predictions["cfg_scale"].unique()), "osD^v<>"))
    for ax, backbone in zip(axes[0], backbones):
        rows, label = _figure_rows(predictions, backbone)
        for row in rows.itertuples(index=False):
            ax.errorbar(row.observed, row.predicted, yerr=[[row.predicted - row.lower], [row.upper - row.predicted]],
                        fmt=markers.get(row.cfg_scale, "o"), color=colours[row.held_out_group], markersize=5,
                        elinewidth=0.8, capsize=2, alpha=0.85)
        if len(rows):
            low, high = rows[["observed", "lower"]].min().min(), rows[["observed", "upper"]].max().max()
            ax.plot([low, high], [low, high], color="0.5", linestyle=":", linewidth=0.8)
        lines = [f"{backbone}: {label}"]
        model = "nested selection" if label == "nested selection" else None
        for cfg_scale in sorted(rows["cfg_scale"].unique()):
            match = scores[(scores["backbone"] == backbone) & (scores["cfg_scale"] == cfg_scale)
                           & ((scores["model"] == model) if model else scores["selected"])]
            if len(match):
                s = match.iloc[0]
                lines.append(f"cfg {cfg_scale:g}: R²oc {s.r2_oc:.2f}, ρ {s.spearman_oc:.2f}, cover {s.coverage:.2f}")
        ax.set_title("\n".join(lines), fontsize=7)
        ax.set_xlabel(f"observed {target}", fontsize=8)
        ax.set_ylabel(f"predicted {target} (cluster held out)", fontsize=8)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colours[c], marker="o", linestyle="", label=c) for c in clusters]
    handles += [plt.Line2D([], [], color="0.3", marker=m, linestyle="", label=f"cfg {w:g}") for w, m in markers.items()]
    if handles:
        axes[0][-1].legend(handles=handles, fontsize=6, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)
