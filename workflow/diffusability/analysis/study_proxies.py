"""The inputs and outputs of a prediction: a study's latent proxies, a new tokenizer's, its prediction rows.

Only proxies computable from latents alone are candidates (the registry's metrics without the training
latents; curves left out): reconstruction, encoder- and model-based rows need networks a latent file
lacks. A new tokenizer's proxies are computed with the metric registry and the study's own recorded
metric parameters, and compared with the study's tokenizers of the same latent shape only.
"""

from __future__ import annotations

import inspect
import json
import logging
from pathlib import Path

log = logging.getLogger("diffusability.analysis")


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
