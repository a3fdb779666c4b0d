"""Classifier-free guidance: each tokenizer's best scale, and the correlations at that optimum (Figs. 7, 25).

The study samples SiT-B and LightningDiT-B at guidance scales 1.0 … 3.0, finds every tokenizer's best
gFID between 1.5 and 2.0 (its Fig. 25: "the optimal CFG across all approaches lies between 1.5 and 2.0")
and correlates the proxies with each tokenizer's gFID at its own optimum (its Fig. 7). Here
(docs/analysis.md §5):

- :func:`optima` — per (target, tokenizer, backbone): the best scale inside ``analysis.guidance_range``
  (default [1.5, 2.0]) and over all sampled scales, with their values (means over seeds) and whether the
  overall optimum lies inside the range (the paper's claim, checked per tokenizer);
- :func:`optimum_correlations` — every proxy against the per-tokenizer optimum inside the range, per
  (family, backbone), with the same statistics as the correlation table (``correlations.correlation_row``).

A backbone with no sampled scale inside the range has no rows (logged).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from . import correlations as corr

log = logging.getLogger("diffusability.analysis")

#: the study's range of optimal guidance scales (its Fig. 25)
GUIDANCE_RANGE = (1.5, 2.0)

OPTIMA_COLUMNS = ["target", "tokenizer", "family", "backbone", "scale_low", "scale_high", "best_scale", "best_value",
                  "best_scale_all", "best_value_all", "in_range", "n_scales_in_range", "n_scales"]
CORRELATION_COLUMNS = ["family", "backbone", "scale_low", "scale_high", "target", "proxy", "direction", "method", "n",
                       "r", "ci95_low", "ci95_high", "p_val", "boot_low", "boot_high", "n_seeds", "perspective",
                       "expected_sign", "sign_ok"]


def _best(values: pd.Series, direction: str) -> tuple[float, float]:
    """(scale, value) of the best value; ties go to the smallest scale."""
    values = values.sort_index()
    position = int(np.argmin(values.to_numpy()) if direction == "lower" else np.argmax(values.to_numpy()))
    return float(values.index[position]), float(values.iloc[position])


def optima(generation: pd.DataFrame, families: pd.Series, targets, scale_range=GUIDANCE_RANGE) -> pd.DataFrame:
    """Every tokenizer's best guidance scale per backbone and target (:data:`OPTIMA_COLUMNS`).

    Examples
    --------
    >>> gen = pd.DataFrame({"tokenizer": "a", "backbone": "sit", "model": "trained", "metric": "fd",
    ...                     "direction": "lower", "cfg_scale": [1.0, 1.5, 2.0, 3.0], "value": [9.0, 5.0, 6.0, 4.0]})
    >>> row = optima(gen, pd.Series({"a": "f"}), ["fd"]).iloc[0]
    >>> (float(row.best_scale), float(row.best_value), float(row.best_scale_all), bool(row.in_range))
    (1.5, 5.0, 3.0, False)
    """
    low, high = (float(v) for v in scale_range)
    rows = []
    for target in targets:
        direction = corr.target_direction(generation, target)
        values = corr.target_values(generation, target)
        if values.empty:
            continue
        means = values.groupby(["tokenizer", "backbone", "cfg_scale"])["value"].mean()
        for (tokenizer, backbone), curve in means.groupby(level=["tokenizer", "backbone"], sort=True):
            curve = curve.droplevel(["tokenizer", "backbone"])
            inside = curve[(curve.index >= low - 1e-9) & (curve.index <= high + 1e-9)]
            if inside.empty:
                log.info("guidance: %s/%s has no sampled scale in [%g, %g]", tokenizer, backbone, low, high)
                continue
            best_scale, best_value = _best(inside, direction)
            all_scale, all_value = _best(curve, direction)
            rows.append({"target": target, "tokenizer": tokenizer, "family": families.get(tokenizer, ""),
                         "backbone": backbone, "scale_low": low, "scale_high": high, "best_scale": best_scale,
                         "best_value": best_value, "best_scale_all": all_scale, "best_value_all": all_value,
                         "in_range": bool(low - 1e-9 <= all_scale <= high + 1e-9),
                         "n_scales_in_range": int(len(inside)), "n_scales": int(len(curve))})
    return pd.DataFrame(rows, columns=OPTIMA_COLUMNS)


def optimum_correlations(proxies: pd.DataFrame, optimum: pd.DataFrame, generation: pd.DataFrame,
                         methods=("pearson", "spearman"), proxy_directions: dict[str, str] | None = None,
                         bootstrap: int = corr.BOOTSTRAP_DRAWS, seed: int = 0) -> pd.DataFrame:
    """Every proxy against each tokenizer's target at its best scale in range (:data:`CORRELATION_COLUMNS`).

    ``optimum``: :func:`optima` rows; per (target, backbone) the families one by one and all together.
    The seed bootstrap uses the seeds of each tokenizer's optimal scale.
    """
    from .perspectives import perspective_of

    rows = []
    for (target, backbone), group in optimum.groupby(["target", "backbone"], sort=True):
        goal = corr.target_direction(generation, target)
        values = corr.target_values(generation, target)
        values = values[values["backbone"] == backbone]
        best = group.set_index("tokenizer")["best_scale"]
        at_best = values[np.isclose(values["cfg_scale"], values["tokenizer"].map(best).astype(float))]
        family_sets = sorted(group["family"].unique())
        per_family = [(f, group.loc[group["family"] == f, "tokenizer"]) for f in family_sets]
        if len(family_sets) > 1:
            per_family.append((corr.ALL_FAMILIES, group["tokenizer"]))
        for family, tokenizers in per_family:
            y, y_seeds = corr.seed_matrix(at_best[at_best["tokenizer"].isin(set(tokenizers))])
            columns = proxies.reindex(y.index)
            values, ys = columns.to_numpy(float), y.to_numpy(float)
            for k, proxy in enumerate(columns.columns):
                for method in methods:
                    stats_row = corr.correlation_row(values[:, k], ys, method, y_seeds, bootstrap, seed)
                    if stats_row is None:
                        break
                    direction = (proxy_directions or {}).get(proxy, "")
                    rows.append(corr._check({
                        "family": family, "backbone": backbone, "scale_low": float(group["scale_low"].iloc[0]),
                        "scale_high": float(group["scale_high"].iloc[0]), "target": target, "proxy": proxy,
                        "direction": direction, **stats_row, "n_seeds": int(np.isfinite(y_seeds).sum(axis=1).max()),
                        "perspective": perspective_of(proxy)}, direction, goal))
    table = pd.DataFrame(rows, columns=CORRELATION_COLUMNS)
    table["sign_ok"] = table["sign_ok"].astype("boolean")
    return table
