"""Does a latent proxy metric predict generation quality? Pearson/Spearman r with exact and bootstrap
intervals, the direction check, and two-metric R².

For every (family, backbone, guidance scale) group of tokenizers, each proxy — every latent metric,
every reconstruction metric of the trained tokenizer and, as a post-hoc comparison, the trajectory
metrics of the trained model (``trajectory/…``, the study's Fig. 9) — is correlated across tokenizers
with the generation target (``analysis.target``, default gFID as ``fd``) and with the secondary targets
that have rows (``analysis.secondary_targets``: IS, FDr6). Columns (docs/analysis.md §3):

- ``r``, ``p_val``: scipy's ``pearsonr`` / ``spearmanr`` (two-sided; Spearman's p by the t approximation);
- ``ci95_low/high``: the Fisher-z interval ``tanh(atanh r ± z₀.₉₇₅·se)``, se = 1/√(n − 3) for Pearson (equal
  to scipy's ``pearsonr(...).confidence_interval()``) and Bonett–Wright's √((1 + r²/2)/(n − 3)) for Spearman,
  computed exactly (not rounded);
- ``boot_low/high``: a percentile bootstrap over tokenizers (``analysis.bootstrap`` draws; 0 = off), and over
  each tokenizer's seeds where the generation table has a ``seed`` column with repeats (two stages: tokenizers
  with replacement, then each drawn tokenizer's seeds with replacement, their mean as its target);
- ``sign_ok``: whether r has the sign the proxy's "better" direction predicts (a lower-is-better proxy of a
  lower-is-better target correlates positively); empty (NA) for proxies without a direction ("none", "").

With seed repeats a tokenizer's target is the mean over its seeds (``n_seeds``: the most seeds of a
tokenizer in the group). For every pair of latent proxies an OLS ``target ≈ a + b·m1 + c·m2`` gives R²,
adjusted R², the coefficients and their t-test p-values (:func:`ols`, numpy least squares).
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import require
from .perspectives import main_proxies, perspective_of

log = logging.getLogger("diffusability.analysis")

ALL_FAMILIES = "all"
#: the level of every interval of the correlation table (its columns are named ci95_…)
LEVEL = 0.95
#: bootstrap draws per correlation (``analysis.bootstrap``)
BOOTSTRAP_DRAWS = 2000
#: generation metrics also correlated where their rows exist (``analysis.secondary_targets``)
SECONDARY_TARGETS = ("is", "fdr6")
#: trajectory metrics of the trained models, correlated as post-hoc proxies (the study's Fig. 9)
TRANSPORT_METRICS = ("local_straightness", "global_efficiency")
#: the least tokenizers of a correlation (a Fisher-z interval needs n > 3)
MIN_TOKENIZERS = 4

COLUMNS = ["family", "backbone", "cfg_scale", "target", "proxy", "direction", "method", "n", "r", "ci95_low",
           "ci95_high", "p_val", "boot_low", "boot_high", "n_seeds", "perspective", "expected_sign", "sign_ok"]


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


# --------------------------------------------------------------------------- targets (means over seeds)


def target_direction(generation: pd.DataFrame, target: str) -> str:
    """"lower" or "higher": which way ``target`` is better (its rows' ``direction``; FD-like when unknown)."""
    rows = generation.loc[generation["metric"] == target, "direction"]
    direction = str(rows.iloc[0]) if len(rows) else "lower"
    return direction if direction in ("lower", "higher") else "lower"


def available_targets(generation: pd.DataFrame, target: str, secondary=SECONDARY_TARGETS) -> list[str]:
    """``target`` first, then the secondary targets that trained models have rows of."""
    present = set(generation.loc[generation["model"] == "trained", "metric"])
    require(target in present, f"no generation rows with metric {target!r} (analysis.target)")
    return [target] + [t for t in secondary if t in present and t != target]


def target_values(generation: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The trained models' rows of ``metric``: tokenizer, backbone, cfg_scale, seed, value.

    ``seed`` is the generation table's ``seed`` column where it has one (seed repeats), else 0.
    """
    rows = generation[(generation["model"] == "trained") & (generation["metric"] == metric)]
    seed = rows["seed"] if "seed" in rows.columns else pd.Series(0, index=rows.index)
    out = pd.DataFrame({"tokenizer": rows["tokenizer"].astype(str), "backbone": rows["backbone"].astype(str),
                        "cfg_scale": rows["cfg_scale"].astype(float), "seed": seed.fillna(0).astype(int),
                        "value": rows["value"].astype(float)})
    return out.groupby(["tokenizer", "backbone", "cfg_scale", "seed"], as_index=False, sort=True)["value"].mean()


def seed_matrix(rows: pd.DataFrame) -> tuple[pd.Series, np.ndarray]:
    """(mean over seeds per tokenizer, the values as a (tokenizers, most seeds) array, NaN-padded on the right).

    ``rows``: one group's :func:`target_values` rows (tokenizer, seed, value).
    """
    wide = rows.groupby(["tokenizer", "seed"], sort=True)["value"].mean().unstack("seed")
    values = wide.to_numpy(float)
    # finite values first in every row (the bootstrap draws seed positions below each row's count)
    order = np.argsort(~np.isfinite(values), axis=1, kind="stable")
    values = np.take_along_axis(values, order, axis=1)
    return pd.Series(np.nanmean(values, axis=1), index=wide.index, name="value"), values


def target_groups(generation: pd.DataFrame, families: pd.Series, target: str):
    """Yield ((family, backbone, cfg_scale), rows) for the trained models, per family and for all families.

    ``rows``: :func:`target_values` rows of the group (one per tokenizer and seed).
    """
    trained = target_values(generation, target)
    require(not trained.empty, f"no generation rows with metric {target!r} (analysis.target)")
    trained = trained.assign(family=trained["tokenizer"].map(families))
    family_sets = sorted(trained["family"].dropna().unique())
    for (backbone, cfg_scale), group in trained.groupby(["backbone", "cfg_scale"], sort=True):
        per_family = [(f, group[group["family"] == f]) for f in family_sets]
        if len(family_sets) > 1:
            per_family.append((ALL_FAMILIES, group))
        for family, rows in per_family:
            if len(rows):
                yield (family, backbone, float(cfg_scale)), rows


def transport_proxies(generation: pd.DataFrame, backbone: str, cfg_scale: float) -> pd.DataFrame:
    """tokenizer × ``trajectory/<metric>`` (means over seeds) of one backbone and scale; empty without rows."""
    rows = generation[(generation["model"] == "trained") & generation["metric"].isin(TRANSPORT_METRICS)
                      & (generation["backbone"] == backbone) & np.isclose(generation["cfg_scale"], cfg_scale)]
    if rows.empty:
        return pd.DataFrame()
    wide = rows.pivot_table(index="tokenizer", columns="metric", values="value", aggfunc="mean")
    wide.columns = [f"trajectory/{c}" for c in wide.columns]
    return wide


def transport_directions(generation: pd.DataFrame) -> dict[str, str]:
    rows = generation[generation["metric"].isin(TRANSPORT_METRICS)]
    return {f"trajectory/{m}": d for m, d in rows.groupby("metric")["direction"].first().items()}


# --------------------------------------------------------------------------- one correlation


def correlation(x: np.ndarray, y: np.ndarray, method: str) -> tuple[float, float]:
    """(r, two-sided p) of ``method`` ("pearson" or "spearman"), by scipy.

    Examples
    --------
    >>> r, p = correlation(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 3.0, 2.0, 4.0]), "spearman")
    >>> round(r, 3)
    0.8
    """
    require(method in ("pearson", "spearman"), f"correlation method {method!r}: expected pearson or spearman")
    result = stats.pearsonr(x, y) if method == "pearson" else stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def fisher_interval(r: float, n: int, method: str = "pearson", level: float = LEVEL) -> tuple[float, float]:
    """The Fisher-z interval of a correlation: ``tanh(atanh r ± z_{(1+level)/2} · se)``.

    se = 1/√(n − 3) for Pearson — the interval of scipy's ``pearsonr(...).confidence_interval()`` — and
    √((1 + r²/2)/(n − 3)) (Bonett and Wright 2000) for Spearman. |r| = 1 gives (r, r); n ≤ 3 gives NaN.

    Examples
    --------
    >>> [round(v, 4) for v in fisher_interval(0.5, 28)]
    [0.156, 0.7358]
    """
    if n <= 3 or not np.isfinite(r):
        return float("nan"), float("nan")
    if abs(r) >= 1.0:
        return float(r), float(r)
    if method == "spearman":
        se = np.sqrt((1.0 + r * r / 2.0) / (n - 3))
    else:
        se = 1.0 / np.sqrt(n - 3)
    half = stats.norm.ppf(0.5 + level / 2.0) * se
    z = np.arctanh(r)
    return float(np.tanh(z - half)), float(np.tanh(z + half))


def _row_correlations(X: np.ndarray, Y: np.ndarray, method: str) -> np.ndarray:
    """r of every row pair of (draws, n) arrays; NaN where a row is constant."""
    if method == "spearman":
        X, Y = stats.rankdata(X, axis=1), stats.rankdata(Y, axis=1)
    degenerate = (np.ptp(X, axis=1) == 0) | (np.ptp(Y, axis=1) == 0)
    xc = X - X.mean(axis=1, keepdims=True)
    yc = Y - Y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=1) / np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    r[degenerate] = np.nan
    return np.clip(r, -1.0, 1.0)


def bootstrap_interval(x: np.ndarray, y: np.ndarray, method: str = "pearson", draws: int = BOOTSTRAP_DRAWS,
                       level: float = LEVEL, seed: int = 0, y_seeds: np.ndarray | None = None
                       ) -> tuple[float, float]:
    """Percentile bootstrap interval of r over tokenizers (and their seeds).

    Parameters
    ----------
    x, y : (n,) arrays
        The proxy and the target (the mean over seeds) of n tokenizers.
    y_seeds : (n, S) array, optional
        Every tokenizer's target per seed, finite values first (NaN-padded). Given (and S > 1), a draw takes
        n tokenizers with replacement and, for each, as many of its seeds with replacement as it has, and
        uses their mean as its target; otherwise a draw resamples (x, y) pairs.
    draws, level, seed
        Bootstrap draws, interval level and the generator's seed (every call with the same n draws the same
        tokenizer indices: common random numbers across proxies).

    Returns
    -------
    (low, high)
        The (1 − level)/2 and (1 + level)/2 quantiles of the draws' r; NaN when fewer than half the draws
        have a defined r (e.g. constant resamples of very few tokenizers) or ``draws`` is 0.

    Examples
    --------
    >>> rng = np.random.default_rng(1); x = rng.normal(size=30); y = x + rng.normal(size=30)
    >>> low, high = bootstrap_interval(x, y)
    >>> bool(low < np.corrcoef(x, y)[0, 1] < high)
    True
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if draws <= 0 or n < 3:
        return float("nan"), float("nan")
    rng = np.random.default_rng([int(seed), n])
    index = rng.integers(0, n, size=(draws, n))
    X = x[index]
    if y_seeds is not None and y_seeds.shape[1] > 1:
        y_seeds = np.asarray(y_seeds, float)
        counts = np.isfinite(y_seeds).sum(axis=1)
        require(bool((counts >= 1).all()), "bootstrap: a tokenizer has no finite target value")
        drawn = counts[index][..., None]                                     # (draws, n, 1)
        positions = np.minimum((rng.random((draws, n, y_seeds.shape[1])) * drawn).astype(int), drawn - 1)
        values = y_seeds[index[..., None], positions]                       # (draws, n, S)
        used = np.arange(y_seeds.shape[1]) < drawn
        Y = np.where(used, values, 0.0).sum(axis=2) / drawn[..., 0]
    else:
        Y = y[index]
    r = _row_correlations(X, Y, method)
    ok = np.isfinite(r)
    if ok.sum() < draws / 2:
        return float("nan"), float("nan")
    low, high = np.quantile(r[ok], [0.5 - level / 2.0, 0.5 + level / 2.0])
    return float(low), float(high)


def expected_sign(proxy_direction: str, target_direction: str) -> int:
    """+1 / −1: the sign of r the two "better" directions predict; 0 when the proxy has none.

    >>> expected_sign("lower", "lower"), expected_sign("higher", "lower"), expected_sign("none", "lower")
    (1, -1, 0)
    """
    if proxy_direction not in ("lower", "higher") or target_direction not in ("lower", "higher"):
        return 0
    return 1 if proxy_direction == target_direction else -1


def correlation_row(x, y, method: str, y_seeds: np.ndarray | None = None, draws: int = BOOTSTRAP_DRAWS,
                    seed: int = 0) -> dict | None:
    """n, r, ci95_low/high, p_val, boot_low/high of one proxy and target over the tokenizers that have both.

    ``x``, ``y``: aligned (n,) values (NaN = missing); ``y_seeds``: (n, S) rows aligned with them (see
    :func:`bootstrap_interval`). None when fewer than :data:`MIN_TOKENIZERS` tokenizers have both or either
    is constant.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    xs, ys = x[ok], y[ok]
    if ok.sum() < MIN_TOKENIZERS or np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return None
    r, p = correlation(xs, ys, method)
    low, high = fisher_interval(r, int(ok.sum()), method)
    boot_low, boot_high = bootstrap_interval(xs, ys, method, draws, seed=seed,
                                             y_seeds=None if y_seeds is None else y_seeds[ok])
    return {"method": method, "n": int(ok.sum()), "r": r, "ci95_low": low, "ci95_high": high, "p_val": p,
            "boot_low": boot_low, "boot_high": boot_high}


# --------------------------------------------------------------------------- tables


def _check(row: dict, proxy_direction: str, target_direction: str) -> dict:
    sign = expected_sign(proxy_direction, target_direction)
    row["expected_sign"] = sign
    row["sign_ok"] = pd.NA if sign == 0 else bool(np.sign(row["r"]) == sign)
    return row


def correlate(proxies: pd.DataFrame, generation: pd.DataFrame, families: pd.Series,
              target: str = "fd", methods=("pearson", "spearman"),
              proxy_directions: dict[str, str] | None = None, secondary_targets=SECONDARY_TARGETS,
              bootstrap: int = BOOTSTRAP_DRAWS, seed: int = 0, transport: bool = True) -> pd.DataFrame:
    """The tidy correlation table (:data:`COLUMNS`) of every proxy against every available target.

    ``proxies``: tokenizer × proxy (``source/metric``); ``families``: tokenizer → family. With ``transport``,
    the trajectory metrics of each group's trained models are correlated too (proxy ``trajectory/<metric>``).
    """
    directions = dict(proxy_directions or {})
    directions.update(transport_directions(generation))
    trajectories: dict = {}  # (backbone, cfg_scale) → transport_proxies, shared by targets and families
    rows = []
    for metric in available_targets(generation, target, secondary_targets):
        goal = target_direction(generation, metric)
        for (family, backbone, cfg_scale), group in target_groups(generation, families, metric):
            y, y_seeds = seed_matrix(group)
            columns = proxies.reindex(y.index)
            if transport:
                if (backbone, cfg_scale) not in trajectories:
                    trajectories[backbone, cfg_scale] = transport_proxies(generation, backbone, cfg_scale)
                extra = trajectories[backbone, cfg_scale]
                if len(extra):
                    columns = columns.join(extra.reindex(y.index))
            values, ys = columns.to_numpy(float), y.to_numpy(float)
            for k, proxy in enumerate(columns.columns):
                for method in methods:
                    stats_row = correlation_row(values[:, k], ys, method, y_seeds, bootstrap, seed)
                    if stats_row is None:
                        log.info("skipping %s in %s/%s/cfg %.2f (%s): fewer than %d tokenizers or a constant",
                                 proxy, family, backbone, cfg_scale, metric, MIN_TOKENIZERS)
                        break
                    direction = directions.get(proxy, "")
                    rows.append(_check({"family": family, "backbone": backbone, "cfg_scale": cfg_scale,
                                        "target": metric, "proxy": proxy, "direction": direction, **stats_row,
                                        "n_seeds": int(np.isfinite(y_seeds).sum(axis=1).max()),
                                        "perspective": perspective_of(proxy)}, direction, goal))
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["sign_ok"] = table["sign_ok"].astype("boolean")
    return table


def ols(X: np.ndarray, y: np.ndarray) -> dict:
    """Least squares ``y ≈ a + X b``: r2, adj_r2, coef (a, b…) and their two-sided t-test p-values.

    Examples
    --------
    >>> fit = ols(np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [3.0, 1.0], [4.0, 3.0]]),
    ...           np.array([1.0, 2.9, 5.2, 7.0, 8.9]))
    >>> round(fit["r2"], 4), [round(float(c), 3) for c in fit["coef"]]
    (0.9994, [1.004, 1.958, 0.035])
    """
    n, p = X.shape
    design = np.column_stack([np.ones(n), X])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    sse, sst = float(residual @ residual), float(((y - y.mean()) ** 2).sum())
    dof = n - p - 1
    r2 = 1.0 - sse / sst
    adj = 1.0 - (1.0 - r2) * (n - 1) / dof if dof > 0 else float("nan")
    if dof > 0:
        se = np.sqrt(np.diag(np.linalg.pinv(design.T @ design)) * sse / dof)
        with np.errstate(divide="ignore", invalid="ignore"):
            pval = 2 * stats.t.sf(np.abs(coef / se), dof)
    else:
        pval = np.full(p + 1, np.nan)
    return {"r2": r2, "adj_r2": adj, "coef": coef, "pval": pval}


def pairwise_regressions(proxies: pd.DataFrame, generation: pd.DataFrame, families: pd.Series,
                         target: str = "fd") -> pd.DataFrame:
    """R² of ``target ≈ a + b·m1 + c·m2`` for every pair of proxies, per group (needs n ≥ 4; means over seeds)."""
    rows = []
    for (family, backbone, cfg_scale), group in target_groups(generation, families, target):
        y, _ = seed_matrix(group)
        values, ys = proxies.reindex(y.index).to_numpy(float), y.to_numpy(float)
        for (i, first), (j, second) in itertools.combinations(enumerate(proxies.columns), 2):
            X = values[:, [i, j]]
            ok = np.isfinite(X).all(axis=1) & np.isfinite(ys)
            Xs = X[ok]
            if ok.sum() < 4 or (np.ptp(Xs, axis=0) == 0).any():
                continue
            if np.linalg.matrix_rank(np.column_stack([np.ones(len(Xs)), Xs])) < 3:
                continue
            fit = ols(Xs, ys[ok])
            rows.append({
                "family": family, "backbone": backbone, "cfg_scale": cfg_scale, "target": target,
                "proxy_1": first, "proxy_2": second, "n": int(ok.sum()), "r2": fit["r2"], "adj_r2": fit["adj_r2"],
                "coef_1": float(fit["coef"][1]), "coef_2": float(fit["coef"][2]),
                "pval_1": float(fit["pval"][1]), "pval_2": float(fit["pval"][2]),
            })
    columns = ["family", "backbone", "cfg_scale", "target", "proxy_1", "proxy_2", "n", "r2", "adj_r2",
               "coef_1", "coef_2", "pval_1", "pval_2"]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------- seed repeats

SEED_COLUMNS = ["target", "family", "backbone", "cfg_scale", "n_tokenizers", "n_seeds_min", "n_seeds_max",
                "seed_sd", "between_sd", "ratio"]


def seed_noise(generation: pd.DataFrame, families: pd.Series, targets) -> pd.DataFrame:
    """Seed noise against the spread between tokenizers, per target and group (:data:`SEED_COLUMNS`).

    ``seed_sd``: the pooled within-tokenizer standard deviation √(Σ_i Σ_s (y_is − ȳ_i)² / Σ_i (S_i − 1)) over
    the tokenizers with at least two seeds; ``between_sd``: the standard deviation (ddof 1) of the tokenizers'
    seed means; ``ratio`` = between_sd / seed_sd — how many seed-noise units separate the tokenizers (NaN
    without repeats: a generation table without a ``seed`` column, or one seed each).

    Examples
    --------
    >>> gen = pd.DataFrame({"tokenizer": list("aabb"), "backbone": "sit", "cfg_scale": 1.0, "model": "trained",
    ...                     "metric": "fd", "seed": [0, 1, 0, 1], "value": [1.0, 3.0, 9.0, 11.0]})
    >>> row = seed_noise(gen, pd.Series({"a": "f", "b": "f"}), ["fd"]).iloc[0]
    >>> (row.seed_sd, row.between_sd, row.ratio) == (np.sqrt(2.0), np.sqrt(32.0), 4.0)
    True
    """
    rows = []
    for target in targets:
        for (family, backbone, cfg_scale), group in target_groups(generation, families, target):
            per = group.groupby("tokenizer")["value"]
            counts, means = per.count(), per.mean()
            squares = group.assign(d=group["value"] - group["tokenizer"].map(means))["d"].pow(2)
            dof = int((counts - 1).clip(lower=0).sum())
            seed_sd = float(np.sqrt(squares.sum() / dof)) if dof > 0 else float("nan")
            between = float(means.std(ddof=1)) if len(means) > 1 else float("nan")
            ratio = between / seed_sd if np.isfinite(seed_sd) and seed_sd > 0 else float("nan")
            rows.append({"target": target, "family": family, "backbone": backbone, "cfg_scale": cfg_scale,
                         "n_tokenizers": int(len(means)), "n_seeds_min": int(counts.min()),
                         "n_seeds_max": int(counts.max()), "seed_sd": seed_sd, "between_sd": between,
                         "ratio": ratio})
    return pd.DataFrame(rows, columns=SEED_COLUMNS)


PAIR_COLUMNS = ["target", "family", "backbone", "cfg_scale", "perspective_1", "proxy_1", "perspective_2", "proxy_2",
                "n", "r2", "adj_r2", "r2_1", "r2_2", "r_12", "coef_1", "coef_2"]


def perspective_pairs(proxies: pd.DataFrame, generation: pd.DataFrame, families: pd.Series,
                      perspectives: pd.DataFrame, target: str = "fd") -> pd.DataFrame:
    """The study's Fig. 8 as a table: every pair of perspectives' main proxies, ``target ≈ a + b·m1 + c·m2``.

    Per (family, backbone, guidance scale) group the main proxy of each of the study's perspectives is the
    best-|Pearson r| metric of ``perspectives`` (:func:`perspective_table`); for every pair: n, R², adjusted R²,
    each proxy's own R² (r²), the Pearson r between the two proxies (their collinearity) and the coefficients
    (means over seeds; pairs with fewer than 4 tokenizers or a rank-deficient design are left out).
    """
    rows = []
    for (family, backbone, cfg_scale), group in target_groups(generation, families, target):
        y, _ = seed_matrix(group)
        main = main_proxies(perspectives, target, family, backbone, cfg_scale)
        main = [(p, proxy) for p, proxy in main if proxy in proxies.columns]
        for (p1, m1), (p2, m2) in itertools.combinations(main, 2):
            X = proxies[[m1, m2]].reindex(y.index)
            ok = (X.notna().all(axis=1) & y.notna()).to_numpy()
            Xs, ys = X.to_numpy(float)[ok], y.to_numpy(float)[ok]
            if ok.sum() < 4 or np.linalg.matrix_rank(np.column_stack([np.ones(len(Xs)), Xs])) < 3:
                continue
            fit = ols(Xs, ys)
            rows.append({"target": target, "family": family, "backbone": backbone, "cfg_scale": cfg_scale,
                         "perspective_1": p1, "proxy_1": m1, "perspective_2": p2, "proxy_2": m2, "n": int(ok.sum()),
                         "r2": fit["r2"], "adj_r2": fit["adj_r2"], "r2_1": ols(Xs[:, :1], ys)["r2"],
                         "r2_2": ols(Xs[:, 1:], ys)["r2"], "r_12": float(np.corrcoef(Xs[:, 0], Xs[:, 1])[0, 1]),
                         "coef_1": float(fit["coef"][1]), "coef_2": float(fit["coef"][2])})
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)
