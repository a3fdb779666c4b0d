"""Does a latent proxy metric predict generation quality? Pearson/Spearman r and two-metric R².

For every (family, backbone, guidance scale) group of tokenizers, each proxy — every latent
metric and every reconstruction metric of the trained tokenizer — is correlated with the
generation target (default: the Fréchet distance of the samples) across tokenizers, with
pingouin (0.7 column names: ``n, r, CI95, p_val``). For every pair of proxies an OLS
``target ≈ a + b·m1 + c·m2`` gives R² and adjusted R² (pingouin ``linear_regression``).
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pandas as pd

from ..errors import require

log = logging.getLogger("diffusability.analysis")

ALL_FAMILIES = "all"


def scalar_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of metrics with one value per tokenizer; curves (e.g. ``viv_curve``, one row per t) are left out."""
    if table.empty:
        return table
    per_tokenizer = table.groupby(["tokenizer", "metric"]).size().groupby("metric").max()
    curves = set(per_tokenizer[per_tokenizer > 1].index)
    return table[~table["metric"].isin(curves)]


def proxy_matrix(metrics: pd.DataFrame, reconstruction: pd.DataFrame) -> pd.DataFrame:
    """Wide table: one row per tokenizer, one column per scalar proxy (``source/metric``)."""
    frames = []
    for source, table in (("latent", metrics), ("reconstruction", reconstruction)):
        table = scalar_rows(table)
        if table.empty:
            continue
        table = table[~table["metric"].str.endswith("_untrained")]
        wide = table.pivot_table(index="tokenizer", columns="metric", values="value", aggfunc="first")
        wide.columns = [f"{source}/{c}" for c in wide.columns]
        frames.append(wide)
    require(frames, "no latent or reconstruction metrics to correlate")
    return drop_proportional_duplicates(pd.concat(frames, axis=1).sort_index())


def drop_proportional_duplicates(proxies: pd.DataFrame) -> pd.DataFrame:
    """Drop columns that are a positive multiple of an earlier column on every tokenizer.

    ``viv_uniform_per_dim`` is ``viv_uniform / D`` and ``sec_r0.5`` is ``sec``; when every
    tokenizer has the same D they carry no information of their own and would only repeat
    rows in the correlation tables (with several latent sizes they differ and are kept).
    """
    kept: list[str] = []
    for column in proxies.columns:
        values = proxies[column].to_numpy(float)
        duplicate = None
        for other in kept:
            reference = proxies[other].to_numpy(float)
            both = np.isfinite(values) & np.isfinite(reference)
            if not both.any() or (np.isfinite(values) != np.isfinite(reference)).any():
                continue
            ratio = values[both] / np.where(reference[both] == 0, np.nan, reference[both])
            if np.all(np.isfinite(ratio)) and ratio.min() > 0 and np.allclose(ratio, ratio[0], rtol=1e-9, atol=0):
                duplicate = other
                break
        if duplicate is None:
            kept.append(column)
        else:
            log.info("%s is proportional to %s on every tokenizer: not correlated separately", column, duplicate)
    return proxies[kept]


def directions(metrics: pd.DataFrame, reconstruction: pd.DataFrame) -> dict[str, str]:
    out = {}
    for source, table in (("latent", metrics), ("reconstruction", reconstruction)):
        for metric, direction in table.groupby("metric")["direction"].first().items():
            out[f"{source}/{metric}"] = direction
    return out


def target_groups(generation: pd.DataFrame, families: pd.Series, target: str):
    """Yield ((family, backbone, cfg_scale), Series tokenizer → target value) for trained models."""
    trained = generation[(generation["model"] == "trained") & (generation["metric"] == target)]
    require(not trained.empty, f"no generation rows with metric {target!r} (analysis.target)")
    trained = trained.assign(family=trained["tokenizer"].map(families))
    family_sets = sorted(trained["family"].unique())
    for (backbone, cfg_scale), group in trained.groupby(["backbone", "cfg_scale"], sort=True):
        per_family = [(f, group[group["family"] == f]) for f in family_sets]
        if len(family_sets) > 1:
            per_family.append((ALL_FAMILIES, group))
        for family, rows in per_family:
            yield (family, backbone, float(cfg_scale)), rows.set_index("tokenizer")["value"]


def correlate(proxies: pd.DataFrame, generation: pd.DataFrame, families: pd.Series,
              target: str = "fd", methods=("pearson", "spearman"),
              proxy_directions: dict[str, str] | None = None) -> pd.DataFrame:
    """Tidy correlation table: family, backbone, cfg_scale, proxy, method, n, r, ci95_low, ci95_high, p_val."""
    import pingouin as pg

    rows = []
    for (family, backbone, cfg_scale), y in target_groups(generation, families, target):
        for proxy in proxies.columns:
            x = proxies[proxy].reindex(y.index)
            ok = x.notna() & y.notna()
            if ok.sum() < 4 or np.ptp(x[ok].to_numpy()) == 0 or np.ptp(y[ok].to_numpy()) == 0:
                log.warning("skipping %s in %s/%s/cfg %.2f: fewer than 4 tokenizers (no CI) or a constant",
                            proxy, family, backbone, cfg_scale)
                continue
            for method in methods:
                stats = pg.corr(x[ok].to_numpy(float), y[ok].to_numpy(float), method=method)
                low, high = stats["CI95"].iloc[0]
                rows.append({
                    "family": family, "backbone": backbone, "cfg_scale": cfg_scale, "target": target,
                    "proxy": proxy, "direction": (proxy_directions or {}).get(proxy, ""),
                    "method": method, "n": int(stats["n"].iloc[0]), "r": float(stats["r"].iloc[0]),
                    "ci95_low": float(low), "ci95_high": float(high), "p_val": float(stats["p_val"].iloc[0]),
                })
    columns = ["family", "backbone", "cfg_scale", "target", "proxy", "direction", "method", "n", "r",
               "ci95_low", "ci95_high", "p_val"]
    return pd.DataFrame(rows, columns=columns)


def pairwise_regressions(proxies: pd.DataFrame, generation: pd.DataFrame, families: pd.Series,
                         target: str = "fd") -> pd.DataFrame:
    """R² of ``target ≈ a + b·m1 + c·m2`` for every pair of proxies, per group (needs n ≥ 4)."""
    import pingouin as pg

    rows = []
    for (family, backbone, cfg_scale), y in target_groups(generation, families, target):
        for first, second in itertools.combinations(proxies.columns, 2):
            X = proxies[[first, second]].reindex(y.index)
            ok = X.notna().all(axis=1) & y.notna()
            if ok.sum() < 4 or (X[ok].std(ddof=0) == 0).any():
                continue
            Xs = X[ok].to_numpy(float)
            if np.linalg.matrix_rank(np.column_stack([np.ones(len(Xs)), Xs])) < 3:
                continue
            fit = pg.linear_regression(Xs, y[ok].to_numpy(float), add_intercept=True)
            rows.append({
                "family": family, "backbone": backbone, "cfg_scale": cfg_scale, "target": target,
                "proxy_1": first, "proxy_2": second, "n": int(ok.sum()),
                "r2": float(fit["r2"].iloc[0]), "adj_r2": float(fit["adj_r2"].iloc[0]),
                "coef_1": float(fit["coef"].iloc[1]), "coef_2": float(fit["coef"].iloc[2]),
                "pval_1": float(fit["pval"].iloc[1]), "pval_2": float(fit["pval"].iloc[2]),
            })
    columns = ["family", "backbone", "cfg_scale", "target", "proxy_1", "proxy_2", "n", "r2", "adj_r2",
               "coef_1", "coef_2", "pval_1", "pval_2"]
    return pd.DataFrame(rows, columns=columns)
