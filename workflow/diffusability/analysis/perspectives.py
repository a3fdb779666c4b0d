"""Which perspective of a latent space each metric measures (the study's Fig. 1 and Fig. 4), as data.

The study groups its proxy metrics into seven *perspectives* (docs/analysis.md §2): velocity ambiguity,
semantic separability, spatial structure, latent smoothness, manifold continuity, latent uniformity and
affine equivariance. Within each perspective the metric with the largest |r| against the generation
target is its *main proxy*; the perspectives are ranked by that best |r|.

:data:`PERSPECTIVES` maps every metric name of the registry (``metrics/registry.py``: the latent
metrics, the ``tokenizer-metrics``, ``model-metrics`` and ``trajectory-metrics`` rows) to its perspective,
which each registry entry names. Metrics that are none of the seven are grouped as ``fisher geometry``
(the Fisher-information diagnostics and the alignment/penalty metrics of docs/fisher-geometry.md),
``transport (post hoc)`` or ``other``; reconstruction metrics (the ``reconstruction/…`` proxies) are
``reconstruction``.

:func:`perspective_table` turns a correlation table into the Fig. 4 table: per group (target, family,
backbone, guidance scale, method) and perspective, every metric's r, the best one flagged, and the
perspectives ranked by their best |r| (the study's seven first, then the other groups).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..metrics.registry import ALL_METRICS, OTHER_PERSPECTIVES, PAPER_PERSPECTIVES, metric_perspective

__all__ = ["PAPER_PERSPECTIVES", "OTHER_PERSPECTIVES", "PERSPECTIVES", "COLUMNS", "metric_name", "perspective_of",
           "is_paper_perspective", "perspective_table", "main_proxies"]

#: metric name (as in the metrics table) → perspective, read from the metric registry (each MetricSpec names its
#: perspective, so registering a metric places it)
PERSPECTIVES: dict[str, str] = {name: spec.perspective for name, spec in ALL_METRICS.items()}

#: the columns of the perspectives table (results/tables/perspectives.parquet)
COLUMNS = ["target", "family", "backbone", "cfg_scale", "method", "perspective", "paper", "metric", "proxy",
           "direction", "n", "r", "ci95_low", "ci95_high", "boot_low", "boot_high", "sign_ok", "best", "best_abs_r", "rank"]


def metric_name(proxy: str) -> str:
    """The metric of a proxy column (``latent/viv_uniform`` → ``viv_uniform``)."""
    return proxy.split("/", 1)[1] if "/" in proxy else proxy


def perspective_of(proxy: str) -> str:
    """The perspective of a proxy (``source/metric`` or a bare metric name); unknown metrics are ``other``.

    >>> perspective_of("latent/viv_uniform"), perspective_of("latent/sec_r0.25"), perspective_of("reconstruction/rfd")
    ('velocity ambiguity', 'latent smoothness', 'reconstruction')
    """
    source = proxy.split("/", 1)[0] if "/" in proxy else ""
    if source == "reconstruction":
        return "reconstruction"
    return metric_perspective(metric_name(proxy))


def is_paper_perspective(perspective: str) -> bool:
    return perspective in PAPER_PERSPECTIVES


GROUP_KEYS = ["target", "family", "backbone", "cfg_scale", "method"]


def perspective_table(correlations: pd.DataFrame) -> pd.DataFrame:
    """The Fig. 4 table: every proxy's r by perspective, the best per perspective, perspectives ranked.

    Parameters
    ----------
    correlations : DataFrame
        The correlation table (columns ``target, family, backbone, cfg_scale, method, proxy, direction, n, r,
        ci95_low, ci95_high``; ``boot_low``, ``boot_high``, ``sign_ok`` where present). Rows of the post-hoc
        trajectory metrics (``trajectory/…``) are left out: they are not properties of the latent space.

    Returns
    -------
    DataFrame
        :data:`COLUMNS` (``metric``: the bare metric name, ``proxy``: ``source/metric``). Per (target, family, backbone, cfg_scale, method, perspective): ``best`` marks the
        metric with the largest |r| (its main proxy), ``best_abs_r`` is that |r| and ``rank`` orders the
        perspectives of the group by it: the study's seven (``paper``) first, 1 … k, then the other groups.

    Examples
    --------
    >>> corr = pd.DataFrame({"target": "fd", "family": "f", "backbone": "b", "cfg_scale": 1.0, "method": "pearson",
    ...                      "proxy": ["latent/viv_uniform", "latent/lnc", "latent/srss"], "direction": "",
    ...                      "n": 6, "r": [0.9, -0.5, -0.7], "ci95_low": 0.0, "ci95_high": 0.0})
    >>> table = perspective_table(corr)
    >>> table[["perspective", "metric", "rank"]].values.tolist()
    [['velocity ambiguity', 'viv_uniform', 1], ['spatial structure', 'srss', 2], ['semantic separability', 'lnc', 3]]
    """
    if correlations.empty:
        return pd.DataFrame(columns=COLUMNS)
    rows = correlations[~correlations["proxy"].str.startswith("trajectory/")].copy()
    rows["perspective"] = rows["proxy"].map(perspective_of)
    rows["paper"] = rows["perspective"].map(is_paper_perspective)
    rows["metric"] = rows["proxy"].map(metric_name)
    for column in ("boot_low", "boot_high"):
        if column not in rows:
            rows[column] = np.nan
    if "sign_ok" not in rows:
        rows["sign_ok"] = pd.array([pd.NA] * len(rows), dtype="boolean")
    rows["abs_r"] = rows["r"].abs()
    keys = GROUP_KEYS + ["perspective"]
    rows["best_abs_r"] = rows.groupby(keys, dropna=False)["abs_r"].transform("max")
    # the first of equal |r| (by proxy name) is the best: exactly one per perspective
    rows = rows.sort_values(keys + ["abs_r", "proxy"], ascending=[True] * len(keys) + [False, True])
    rows["best"] = ~rows.duplicated(keys)
    best = rows[rows["best"]].copy()
    # the study's perspectives first (1 … k by best |r|), then the other groups (k + 1 …)
    best["order"] = np.where(best["paper"], 0, 1) * 10.0 - best["best_abs_r"]
    best["rank"] = best.groupby(GROUP_KEYS, dropna=False)["order"].rank(method="first")
    rows = rows.merge(best[keys + ["rank"]], on=keys, how="left")
    rows["rank"] = rows["rank"].astype(int)
    rows = rows.sort_values(GROUP_KEYS + ["rank", "abs_r"], ascending=[True] * len(GROUP_KEYS) + [True, False],
                            ignore_index=True)
    return rows[COLUMNS]


def main_proxies(perspectives: pd.DataFrame, target: str, family: str, backbone: str, cfg_scale: float,
                 method: str = "pearson", paper_only: bool = True) -> list[tuple[str, str]]:
    """[(perspective, proxy)] of one group's main proxies, in rank order (the study's seven unless not paper_only)."""
    if perspectives.empty or "rank" not in perspectives.columns:  # too few tokenizers for any correlation
        return []
    rows = perspectives[(perspectives["target"] == target) & (perspectives["family"] == family)
                        & (perspectives["backbone"] == backbone) & np.isclose(perspectives["cfg_scale"], cfg_scale)
                        & (perspectives["method"] == method) & perspectives["best"]]
    if paper_only:
        rows = rows[rows["paper"]]
    rows = rows.sort_values("rank")
    return list(zip(rows["perspective"], rows["proxy"]))
