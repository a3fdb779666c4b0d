"""Predict a tokenizer's generation target (e.g. gFID) from its latent proxies, tested out of cluster.

The predictors, for one (backbone, guidance scale) and the study's tokenizers as rows:

- single-proxy OLS ``y ≈ a + b·x`` for every proxy, and
- two-proxy OLS ``y ≈ a + b·x1 + c·x2`` for every pair of proxies.

**Test: leave one cluster out (LOCO).** Tokenizers of one cluster (:func:`tokenizer_cluster`: the
tokenizers table's ``cluster`` column where set, else the regularizer name) are alike, so a random
split would predict a tokenizer from its siblings. Every cluster is predicted by a fit on the other
clusters only, and the scores are computed over all held-out predictions ŷ:

- ``r2_oc = 1 − Σ(y − ŷ)² / Σ(y − ȳ)²``, ȳ the mean of all the group's y (negative: worse than ȳ);
- ``spearman_oc``: Spearman ρ(y, ŷ) (does the predictor rank the tokenizers?);
- ``coverage``: the share of y inside their OLS prediction interval
  ``ŷ ± t_{(1+level)/2, n−p−1} · s · √(1 + x₀ᵀ(XᵀX)⁻¹x₀)`` (nominal ``level``, default 90 %); exact for a
  linear relation with i.i.d. Gaussian noise, lower when a held-out cluster is shifted as a whole.

A fit needs ``n ≥ p + 2`` tokenizers (one residual degree of freedom) and a full-rank design; a
model with an unfittable fold is not scored.

**Model selection.** ``selected`` marks, per (backbone, scale), the model with the best ``r2_oc``
among all models: that choice is *not nested* — it is the best of many LOCO scores on the same
tokenizers, so its ``r2_oc`` is optimistic. The honest score of the whole procedure is the row
``model = "nested selection"``: inside each outer fold the model is chosen by an inner LOCO on the
training clusters only (best inner ``r2_oc``), fitted on them, then predicts the held-out cluster.

**Uncertainty of the scores.** With few tokenizers they are noisy: ``r2_oc_low/high`` is a cluster
bootstrap (clusters drawn with replacement, the held-out predictions kept), ``spearman_low/high``
the Fisher-z interval with the Bonett–Wright standard error √((1 + ρ²/2)/(n − 3)) and
``coverage_low/high`` a Clopper–Pearson interval (points treated as independent) — all at ``level``.

Pure numerics on numpy/scipy/pandas: arrays or tidy frames in, tidy frames out.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import special, stats

from ..errors import require

log = logging.getLogger("diffusability.analysis")

#: nominal coverage of the prediction intervals (and level of the score intervals)
LEVEL = 0.90
#: the least a study needs for a LOCO test and a prediction of a new tokenizer
MIN_TOKENIZERS = 4
MIN_CLUSTERS = 3
#: the model name of the nested-selection rows
NESTED = "nested selection"
BOOTSTRAP_DRAWS = 2000

PREDICTION_COLUMNS = ["tokenizer", "backbone", "cfg_scale", "model", "observed", "predicted", "lower", "upper",
                      "held_out_group", "n_train", "fold_model", "selected"]
SCORE_COLUMNS = ["backbone", "cfg_scale", "target", "model", "proxy_1", "proxy_2", "n_proxies", "n", "n_clusters",
                 "r2_oc", "r2_oc_low", "r2_oc_high", "spearman_oc", "spearman_low", "spearman_high", "coverage",
                 "coverage_low", "coverage_high", "level", "rmse_oc", "mean_width", "r2_in_sample", "intercept",
                 "coef_1", "coef_2", "selected", "selection"]


# --------------------------------------------------------------------------- clusters and targets


def tokenizer_cluster(tokenizers: pd.DataFrame) -> pd.Series:
    """The cluster of every tokenizer: its ``cluster`` column where set, else its regularizer name.

    Parameters
    ----------
    tokenizers : DataFrame
        The study's ``tokenizers`` table: columns ``tokenizer``, ``regularizer`` and optionally ``cluster``.

    Returns
    -------
    Series
        tokenizer → cluster name (str), indexed by tokenizer.

    Examples
    --------
    >>> table = pd.DataFrame({"tokenizer": ["a", "b", "c"], "regularizer": ["none", "none", "mcos"]})
    >>> tokenizer_cluster(table).to_dict()
    {'a': 'none', 'b': 'none', 'c': 'mcos'}
    """
    require("tokenizer" in tokenizers.columns and ("regularizer" in tokenizers.columns
                                                    or "cluster" in tokenizers.columns),
            f"tokenizers table: needs columns 'tokenizer' and 'regularizer' or 'cluster', has {list(tokenizers.columns)}")
    fallback = tokenizers["regularizer"] if "regularizer" in tokenizers.columns else pd.Series(
        [None] * len(tokenizers), index=tokenizers.index)
    cluster = tokenizers["cluster"] if "cluster" in tokenizers.columns else fallback
    # an unset cluster ("" or missing) falls back to the regularizer: a study may name only some
    cluster = cluster.where(cluster.notna() & (cluster.astype(str) != ""), fallback)
    require(cluster.notna().all(), "tokenizers table: a tokenizer has neither a cluster nor a regularizer")
    return pd.Series(cluster.astype(str).to_numpy(), index=tokenizers["tokenizer"].to_numpy(), name="cluster")


def target_rows(generation: pd.DataFrame, target: str) -> pd.DataFrame:
    """The trained models' ``target`` rows: tokenizer, backbone, cfg_scale, value (one per triple; the mean over
    seeds where the generation table has seed repeats).

    Examples
    --------
    >>> gen = pd.DataFrame({"tokenizer": ["a", "a"], "backbone": ["sit", "sit"], "cfg_scale": [1.0, 1.0],
    ...                     "model": ["trained", "untrained"], "metric": ["fd", "fd"], "value": [3.0, 9.0]})
    >>> target_rows(gen, "fd")["value"].tolist()
    [3.0]
    """
    rows = generation[(generation["model"] == "trained") & (generation["metric"] == target)]
    require(not rows.empty, f"generation table: no rows of trained models with metric {target!r}")
    rows = rows.groupby(["tokenizer", "backbone", "cfg_scale"], as_index=False, sort=True)["value"].mean()
    return rows.astype({"cfg_scale": float, "value": float})


def target_direction(generation: pd.DataFrame, target: str) -> str:
    """"lower" or "higher": which way the target is better (from the rows' ``direction``; FD: lower)."""
    rows = generation.loc[generation["metric"] == target, "direction"] if "direction" in generation else []
    direction = str(rows.iloc[0]) if len(rows) else "lower"
    return direction if direction in ("lower", "higher") else "lower"


def complete_proxies(proxies: pd.DataFrame, tokenizers: Sequence[str]) -> pd.DataFrame:
    """The proxy columns with a finite value for every one of ``tokenizers`` (others are dropped, logged)."""
    frame = proxies.reindex(list(tokenizers)).astype(float)
    finite = np.isfinite(frame.to_numpy()).all(axis=0)
    dropped = [c for c, ok in zip(frame.columns, finite) if not ok]
    if dropped:
        log.info("predict: proxies without a value for every tokenizer are not used: %s", dropped)
    return frame.loc[:, finite]


# --------------------------------------------------------------------------- OLS


@dataclass(frozen=True)
class OLSFit:
    """An OLS fit with intercept; proxies are standardised inside (conditioning), coefficients are not.

    ``intercept``, ``coef`` (p,) are on the proxies' own scale; ``xtx_inv`` (p+1, p+1) is the inverse of
    the standardised design's Gram matrix, ``sigma`` the residual standard deviation on ``dof = n − p − 1``.
    """

    intercept: float
    coef: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    xtx_inv: np.ndarray
    sigma: float
    dof: int
    r2: float


def can_fit(X: np.ndarray) -> bool:
    """Whether OLS with intercept on ``X`` (n, p) leaves a residual degree of freedom and is full rank.

    Examples
    --------
    >>> can_fit(np.array([[0.0], [1.0], [2.0]])), can_fit(np.array([[0.0], [1.0]]))
    (True, False)
    """
    n, p = X.shape
    if n < p + 2 or not np.isfinite(X).all():
        return False
    scale = X.std(axis=0)
    if (scale == 0).any():
        return False
    if p == 1:  # a non-constant proxy and the intercept are independent
        return True
    design = np.column_stack([np.ones(n), (X - X.mean(axis=0)) / scale])
    return int(np.linalg.matrix_rank(design)) == p + 1


def ols_fit(X: np.ndarray, y: np.ndarray) -> OLSFit:
    """OLS ``y ≈ a + X·b`` of ``y`` (n,) on ``X`` (n, p); needs :func:`can_fit`.

    Examples
    --------
    >>> fit = ols_fit(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([1.0, 3.1, 4.9, 7.0]))
    >>> round(float(fit.coef[0]), 6), round(fit.intercept, 6), fit.dof
    (1.98, 1.03, 2)
    """
    X, y = np.asarray(X, float), np.asarray(y, float)
    require(X.ndim == 2 and y.shape == (X.shape[0],), f"ols_fit: X (n, p) and y (n,), got {X.shape}, {y.shape}")
    require(can_fit(X), f"ols_fit: {X.shape[0]} rows cannot fit {X.shape[1]} proxies (need n ≥ p + 2, full rank)")
    n, p = X.shape
    center, scale = X.mean(axis=0), X.std(axis=0)
    design = np.column_stack([np.ones(n), (X - center) / scale])
    xtx_inv = np.linalg.inv(design.T @ design)
    beta = xtx_inv @ (design.T @ y)
    residual = y - design @ beta
    dof = n - p - 1
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(residual @ residual) / total if total > 0 else float("nan")
    coef = beta[1:] / scale
    return OLSFit(intercept=float(beta[0] - coef @ center), coef=coef, center=center, scale=scale,
                  xtx_inv=xtx_inv, sigma=float(np.sqrt(residual @ residual / dof)), dof=dof, r2=r2)


def prediction_interval(fit: OLSFit, X0: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predictions and the OLS prediction interval of new rows ``X0`` (m, p) → three arrays (m,).

    ``ŷ ± t_{(1+level)/2, dof} · s · √(1 + x₀ᵀ(XᵀX)⁻¹x₀)``: covers a new y of the same linear model with
    i.i.d. Gaussian noise with probability ``level``.

    Examples
    --------
    >>> fit = ols_fit(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([1.0, 3.1, 4.9, 7.0]))
    >>> y, low, high = prediction_interval(fit, np.array([[1.5]]))
    >>> round(float(y[0]), 6), bool(low[0] < y[0] < high[0])
    (4.0, True)
    """
    X0 = np.asarray(X0, float).reshape(-1, len(fit.coef))
    design = np.column_stack([np.ones(len(X0)), (X0 - fit.center) / fit.scale])
    leverage = np.einsum("ij,jk,ik->i", design, fit.xtx_inv, design)
    predicted = fit.intercept + X0 @ fit.coef
    # special.stdtrit is the t quantile (as stats.t.ppf) without the distribution machinery: 100× faster
    half = special.stdtrit(fit.dof, 0.5 + level / 2) * fit.sigma * np.sqrt(1.0 + leverage)
    return predicted, predicted - half, predicted + half


# --------------------------------------------------------------------------- leave one cluster out


def leave_one_cluster_out(X: np.ndarray, y: np.ndarray, groups: np.ndarray, level: float = LEVEL,
                          fit: Callable[[np.ndarray, np.ndarray], OLSFit] | None = None) -> dict | None:
    """Predict every cluster from a fit on the others: arrays (n,) or None when a fold cannot be fitted.

    Parameters
    ----------
    X : (n, p) proxies; y : (n,) target; groups : (n,) cluster of each row.
    fit : the fitting function (default :func:`ols_fit`), called once per fold with that fold's training
        rows only (a test instruments it).

    Returns
    -------
    dict or None
        ``predicted``, ``lower``, ``upper`` (float, (n,)) and ``n_train`` (int, (n,)).

    Examples
    --------
    >>> X = np.arange(6.0).reshape(-1, 1); y = 2 * X[:, 0] + 1
    >>> out = leave_one_cluster_out(X, y, np.array(["a", "a", "b", "b", "c", "c"]))
    >>> np.allclose(out["predicted"], y), out["n_train"].tolist()
    (True, [4, 4, 4, 4, 4, 4])
    """
    X, y, groups = np.asarray(X, float), np.asarray(y, float), np.asarray(groups)
    fit = fit or ols_fit
    out = {key: np.full(len(y), np.nan) for key in ("predicted", "lower", "upper")}
    out["n_train"] = np.zeros(len(y), dtype=int)
    for group in np.unique(groups):
        test = groups == group
        if not can_fit(X[~test]):
            return None
        predicted, lower, upper = prediction_interval(fit(X[~test], y[~test]), X[test], level)
        out["predicted"][test], out["lower"][test], out["upper"][test] = predicted, lower, upper
        out["n_train"][test] = int((~test).sum())
    return out


def r2_out_of_cluster(y: np.ndarray, predicted: np.ndarray) -> float:
    """``1 − Σ(y − ŷ)² / Σ(y − ȳ)²`` (NaN when y is constant).

    Examples
    --------
    >>> r2_out_of_cluster(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 2.0]))
    0.0
    """
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - predicted) ** 2).sum()) / total if total > 0 else float("nan")


def spearman_interval(rho: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Fisher-z interval of a Spearman ρ with the Bonett–Wright standard error √((1 + ρ²/2)/(n − 3)).

    Examples
    --------
    >>> low, high = spearman_interval(0.8, 6)
    >>> round(low, 2), round(high, 2)
    (0.01, 0.98)
    """
    if n <= 3 or not np.isfinite(rho):
        return float("nan"), float("nan")
    rho = float(np.clip(rho, -1 + 1e-12, 1 - 1e-12))
    half = stats.norm.ppf(0.5 + level / 2) * np.sqrt((1 + rho ** 2 / 2) / (n - 3))
    return float(np.tanh(np.arctanh(rho) - half)), float(np.tanh(np.arctanh(rho) + half))


def coverage_interval(covered: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Clopper–Pearson interval of a coverage ``covered / n``.

    Examples
    --------
    >>> [round(v, 3) for v in coverage_interval(6, 6)]
    [0.607, 1.0]
    """
    alpha = 1 - level
    low = stats.beta.ppf(alpha / 2, covered, n - covered + 1) if covered > 0 else 0.0
    high = stats.beta.ppf(1 - alpha / 2, covered + 1, n - covered) if covered < n else 1.0
    return float(low), float(high)


def cluster_bootstrap_r2(y: np.ndarray, predicted: np.ndarray, groups: np.ndarray, level: float = LEVEL,
                         draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``r2_oc`` over clusters drawn with replacement (predictions kept fixed).

    Each draw takes K clusters with replacement (K = the number of clusters) and recomputes ``r2_oc``
    on their points, from per-cluster sums (vectorised: a draw is a vector of cluster multiplicities).
    It measures how much the score depends on which clusters the study happened to contain, not the
    refit variability.

    Examples
    --------
    >>> y = np.arange(8.0); low, high = cluster_bootstrap_r2(y, y + 0.5, np.repeat(list("abcd"), 2))
    >>> bool(low <= high <= 1.0)
    True
    """
    names, index = np.unique(np.asarray(groups), return_inverse=True)
    k = len(names)
    residual = (y - predicted) ** 2
    sums = np.stack([np.bincount(index, weights=w, minlength=k) for w in (np.ones_like(y), y, y * y, residual)])
    counts = np.random.default_rng(seed).multinomial(k, np.full(k, 1.0 / k), size=draws)  # (draws, k)
    n, sy, syy, sse = (counts @ sums.T).T  # four (draws,) vectors
    sst = syy - sy ** 2 / n
    ok = sst > 1e-12 * np.maximum(syy, 1.0)
    if ok.sum() < draws / 2:  # mostly one-cluster draws: no interval
        return float("nan"), float("nan")
    r2 = 1 - sse[ok] / sst[ok]
    return float(np.quantile(r2, 0.5 - level / 2)), float(np.quantile(r2, 0.5 + level / 2))


def score(y: np.ndarray, result: dict, groups: np.ndarray, level: float = LEVEL) -> dict:
    """Out-of-cluster scores of held-out predictions (``result`` of :func:`leave_one_cluster_out`).

    Examples
    --------
    >>> y = np.array([1.0, 2.0, 3.0, 4.0])
    >>> s = score(y, {"predicted": y, "lower": y - 1, "upper": y + 1}, np.array(list("aabb")))
    >>> s["r2_oc"], s["coverage"], s["spearman_oc"]
    (1.0, 1.0, 1.0)
    """
    predicted, lower, upper = result["predicted"], result["lower"], result["upper"]
    covered = int(((lower <= y) & (y <= upper)).sum())
    n = len(y)
    rho = float(stats.spearmanr(y, predicted).statistic) if np.ptp(predicted) > 0 and np.ptp(y) > 0 else float("nan")
    r2_low, r2_high = cluster_bootstrap_r2(y, predicted, groups, level)
    rho_low, rho_high = spearman_interval(rho, n, level)
    cov_low, cov_high = coverage_interval(covered, n, level)
    return {"n": n, "n_clusters": int(len(np.unique(groups))), "r2_oc": r2_out_of_cluster(y, predicted),
            "r2_oc_low": r2_low, "r2_oc_high": r2_high, "spearman_oc": rho, "spearman_low": rho_low,
            "spearman_high": rho_high, "coverage": covered / n, "coverage_low": cov_low, "coverage_high": cov_high,
            "level": level, "rmse_oc": float(np.sqrt(np.mean((y - predicted) ** 2))),
            "mean_width": float(np.mean(upper - lower))}


# --------------------------------------------------------------------------- models and selection


def candidate_models(proxies: Sequence[str], max_proxies: int = 2) -> list[tuple[str, ...]]:
    """Every single proxy, then every pair (``max_proxies = 2``), in a fixed order.

    Examples
    --------
    >>> candidate_models(["a", "b", "c"])
    [('a',), ('b',), ('c',), ('a', 'b'), ('a', 'c'), ('b', 'c')]
    """
    return [m for size in range(1, max_proxies + 1) for m in itertools.combinations(list(proxies), size)]


def model_name(model: Sequence[str]) -> str:
    """``("viv_uniform", "lnc")`` → ``"viv_uniform + lnc"``."""
    return " + ".join(model)


def loco_r2_per_model(X: pd.DataFrame, y: np.ndarray, groups: np.ndarray, models: Sequence[tuple[str, ...]],
                      level: float = LEVEL, fit=None) -> dict[tuple[str, ...], float]:
    """``r2_oc`` of every model that can be fitted in every fold (the inner loop of nested selection)."""
    out = {}
    values, position = X.to_numpy(float), {name: i for i, name in enumerate(X.columns)}
    for model in models:  # numpy columns, not X[list(model)]: pandas indexing was 40 % of the time
        result = leave_one_cluster_out(values[:, [position[p] for p in model]], y, groups, level, fit)
        if result is not None:
            value = r2_out_of_cluster(y, result["predicted"])
            if np.isfinite(value):
                out[model] = value
    return out


def best_model(r2: dict[tuple[str, ...], float]) -> tuple[str, ...] | None:
    """The model with the highest ``r2_oc`` (the first in candidate order on a tie); None if none."""
    return max(r2, key=r2.get) if r2 else None


def nested_selection(X: pd.DataFrame, y: np.ndarray, groups: np.ndarray, models: Sequence[tuple[str, ...]],
                     level: float = LEVEL, fit=None) -> dict | None:
    """LOCO predictions of the whole procedure "choose the best-``r2_oc`` model, fit, predict".

    In each outer fold, the model is chosen by an inner LOCO over the training clusters only (the
    held-out cluster never enters the choice), fitted on them, and predicts the held-out cluster.
    Returns the arrays of :func:`leave_one_cluster_out` plus ``fold_model`` (n,) (the model chosen
    for each row's fold), or None when some fold has no model that can be chosen. ``fit`` (default
    :func:`ols_fit`) does every fit, inner and outer.
    """
    fit = fit or ols_fit
    n = len(y)
    out = {key: np.full(n, np.nan) for key in ("predicted", "lower", "upper")}
    out["n_train"] = np.zeros(n, dtype=int)
    out["fold_model"] = np.empty(n, dtype=object)
    for group in np.unique(groups):
        test = groups == group
        train_X, train_y, train_groups = X[~test], y[~test], groups[~test]
        chosen = best_model(loco_r2_per_model(train_X, train_y, train_groups, models, level, fit))
        if chosen is None:
            return None
        columns = list(chosen)
        fitted = fit(train_X[columns].to_numpy(float), train_y)
        predicted, lower, upper = prediction_interval(fitted, X.loc[test, columns].to_numpy(float), level)
        out["predicted"][test], out["lower"][test], out["upper"][test] = predicted, lower, upper
        out["n_train"][test] = int((~test).sum())
        out["fold_model"][test] = model_name(chosen)
    return out


def _score_row(key: dict, model: tuple[str, ...] | None, scores: dict, fit: OLSFit | None) -> dict:
    names = list(model or ())
    coef = list(fit.coef) if fit is not None else []
    return {**key, "model": model_name(names) if model else NESTED,
            "proxy_1": names[0] if names else "", "proxy_2": names[1] if len(names) > 1 else "",
            "n_proxies": len(names), **scores,
            "r2_in_sample": fit.r2 if fit is not None else float("nan"),
            "intercept": fit.intercept if fit is not None else float("nan"),
            "coef_1": coef[0] if coef else float("nan"), "coef_2": coef[1] if len(coef) > 1 else float("nan"),
            "selected": False, "selection": "" if model else "nested: chosen inside each outer fold"}


def _prediction_rows(key: dict, tokenizers: np.ndarray, y: np.ndarray, groups: np.ndarray, result: dict,
                     model: str, fold_models=None) -> list[dict]:
    return [{"tokenizer": tok, **key, "model": model, "observed": float(y[i]),
             "predicted": float(result["predicted"][i]), "lower": float(result["lower"][i]),
             "upper": float(result["upper"][i]), "held_out_group": str(groups[i]),
             "n_train": int(result["n_train"][i]),
             "fold_model": model if fold_models is None else str(fold_models[i]), "selected": False}
            for i, tok in enumerate(tokenizers)]


def evaluate_group(proxies: pd.DataFrame, y: pd.Series, clusters: pd.Series, key: dict,
                   level: float = LEVEL, max_proxies: int = 2, nested: bool = True) -> tuple[list, list]:
    """LOCO predictions and scores of every model (and the nested selection) for one (backbone, scale).

    Parameters
    ----------
    proxies : DataFrame (tokenizer × proxy), complete for ``y``'s tokenizers.
    y : Series tokenizer → observed target. clusters : Series tokenizer → cluster.
    key : the group's columns, e.g. ``{"backbone": "sit", "cfg_scale": 1.0, "target": "fd"}``.

    Returns
    -------
    (prediction rows, score rows) : two lists of dicts (columns of PREDICTION_COLUMNS / SCORE_COLUMNS).
    """
    tokenizers = y.index.to_numpy()
    X = proxies.reindex(tokenizers)
    values = y.to_numpy(float)
    groups = clusters.reindex(tokenizers).to_numpy(str)
    models = candidate_models(X.columns, max_proxies)
    prediction_key = {k: v for k, v in key.items() if k != "target"}
    predictions, scores = [], []
    for model in models:
        matrix = X[list(model)].to_numpy(float)
        result = leave_one_cluster_out(matrix, values, groups, level)
        if result is None:
            continue
        fit = ols_fit(matrix, values)
        scores.append(_score_row(key, model, score(values, result, groups, level), fit))
        predictions += _prediction_rows(prediction_key, tokenizers, values, groups, result, model_name(model))
    if nested and scores:
        result = nested_selection(X, values, groups, models, level)
        if result is None:
            log.info("predict: %s: no model can be chosen inside every outer fold (too few tokenizers per "
                     "training set): no nested score", key)
        else:
            scores.append(_score_row(key, None, score(values, result, groups, level), None))
            predictions += _prediction_rows(prediction_key, tokenizers, values, groups, result, NESTED,
                                            result["fold_model"])
    return predictions, scores


def mark_selected(predictions: pd.DataFrame, scores: pd.DataFrame) -> None:
    """Mark (in place), per (backbone, cfg_scale), the non-nested model with the best ``r2_oc``."""
    if scores.empty:
        return
    candidates = scores[(scores["model"] != NESTED) & np.isfinite(scores["r2_oc"])]
    for (backbone, cfg_scale), rows in candidates.groupby(["backbone", "cfg_scale"]):
        best = rows["r2_oc"].idxmax()
        scores.loc[best, ["selected", "selection"]] = [True, "best r2_oc of all models (not nested: optimistic)"]
        chosen = ((predictions["backbone"] == backbone) & (predictions["cfg_scale"] == cfg_scale)
                  & (predictions["model"] == scores.loc[best, "model"]))
        predictions.loc[chosen, "selected"] = True


def evaluate_study(proxies: pd.DataFrame, targets: pd.DataFrame, clusters: pd.Series, target: str = "fd",
                   level: float = LEVEL, max_proxies: int = 2, nested: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """LOCO predictions and scores of every model for every (backbone, cfg_scale) of the study.

    Parameters
    ----------
    proxies : DataFrame (tokenizer × proxy) of candidate proxies.
    targets : DataFrame with columns tokenizer, backbone, cfg_scale, value (:func:`target_rows`).
    clusters : Series tokenizer → cluster (:func:`tokenizer_cluster`).

    Returns
    -------
    (predictions, scores) : DataFrames with PREDICTION_COLUMNS and SCORE_COLUMNS (empty when nothing
    could be fitted: fewer than MIN_TOKENIZERS tokenizers or MIN_CLUSTERS clusters per group).

    Examples
    --------
    >>> rng = np.random.default_rng(0); toks = [f"t{i}" for i in range(8)]
    >>> x = pd.DataFrame({"viv": rng.normal(size=8)}, index=toks)
    >>> targets = pd.DataFrame({"tokenizer": toks, "backbone": "sit", "cfg_scale": 1.0,
    ...                         "value": 3 * x["viv"].to_numpy() + rng.normal(scale=0.1, size=8)})
    >>> predictions, scores = evaluate_study(x, targets, pd.Series(np.repeat(list("abcd"), 2), index=toks))
    >>> scores.loc[scores["model"] == "viv", "r2_oc"].item() > 0.9
    True
    """
    predictions, scores = [], []
    for (backbone, cfg_scale), rows in targets.groupby(["backbone", "cfg_scale"], sort=True):
        y = rows.set_index("tokenizer")["value"].astype(float)
        y = y[np.isfinite(y.to_numpy()) & y.index.isin(proxies.index) & y.index.isin(clusters.index)]
        key = {"backbone": backbone, "cfg_scale": float(cfg_scale), "target": target}
        n_clusters = clusters.reindex(y.index).nunique()
        if len(y) < MIN_TOKENIZERS or n_clusters < MIN_CLUSTERS:
            log.warning("predict: %s/cfg %.2f: %d tokenizers in %d clusters, need ≥ %d in ≥ %d: not evaluated",
                        backbone, cfg_scale, len(y), n_clusters, MIN_TOKENIZERS, MIN_CLUSTERS)
            continue
        group_predictions, group_scores = evaluate_group(complete_proxies(proxies, y.index), y, clusters, key,
                                                         level, max_proxies, nested)
        predictions += group_predictions
        scores += group_scores
    predictions = pd.DataFrame(predictions, columns=PREDICTION_COLUMNS)
    scores = pd.DataFrame(scores, columns=SCORE_COLUMNS)
    mark_selected(predictions, scores)
    return predictions.astype({"selected": bool}), scores.astype({"selected": bool})


# --------------------------------------------------------------------------- a new tokenizer


def predict_new(X: np.ndarray, y: np.ndarray, x_new: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """Fit on the study (``X`` (n, p), ``y`` (n,)) and predict a new tokenizer's ``x_new`` (p,).

    Returns (predicted, lower, upper) with the OLS prediction interval at ``level``.

    Examples
    --------
    >>> X = np.array([[0.0], [1.0], [2.0], [3.0]]); y = np.array([1.0, 3.0, 5.0, 7.0 + 1e-9])
    >>> round(predict_new(X, y, np.array([4.0]))[0], 6)
    9.0
    """
    predicted, lower, upper = prediction_interval(ols_fit(X, y), np.asarray(x_new, float).reshape(1, -1), level)
    return float(predicted[0]), float(lower[0]), float(upper[0])


def rank_among(value: float, observed: Sequence[float], direction: str = "lower") -> int:
    """Rank (1 = best) a value would take among ``observed`` values (ties go to the observed ones).

    Examples
    --------
    >>> rank_among(2.5, [1.0, 2.0, 3.0]), rank_among(2.5, [1.0, 2.0, 3.0], "higher")
    (3, 2)
    """
    observed = np.asarray(observed, float)
    better = observed <= value if direction == "lower" else observed >= value
    return int(better.sum()) + 1
