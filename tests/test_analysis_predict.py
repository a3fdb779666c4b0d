"""The gFID predictor: OLS against closed forms, nominal interval coverage, leave-one-cluster-out without
leaks, model selection, and ``diffusability predict`` / ``predictions`` on synthetic studies."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from diffusability.workflow import layout
from diffusability.analysis import predict as P
from diffusability.cli import main
from diffusability.io import read_parquet, save_npz, write_parquet

# --------------------------------------------------------------------------- numerics


def test_ols_and_interval_match_the_closed_form_of_one_proxy():
    """b = Sxy/Sxx, a = ȳ − b·x̄, half-width t·s·√(1 + 1/n + (x₀ − x̄)²/Sxx)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=7) * 50 + 300  # a VIV-like scale: the fit standardises inside
    y = 4.0 - 0.03 * x + rng.normal(scale=0.2, size=7)
    fit = P.ols_fit(x[:, None], y)
    sxx = ((x - x.mean()) ** 2).sum()
    b = ((x - x.mean()) * (y - y.mean())).sum() / sxx
    a = y.mean() - b * x.mean()
    assert fit.coef[0] == pytest.approx(b, rel=1e-10) and fit.intercept == pytest.approx(a, rel=1e-10)
    s = math.sqrt(((y - a - b * x) ** 2).sum() / 5)
    x0 = np.array([250.0, 420.0])
    predicted, lower, upper = P.prediction_interval(fit, x0[:, None], 0.9)
    half = stats.t.ppf(0.95, 5) * s * np.sqrt(1 + 1 / 7 + (x0 - x.mean()) ** 2 / sxx)
    np.testing.assert_allclose(predicted, a + b * x0, rtol=1e-10)
    np.testing.assert_allclose(upper - predicted, half, rtol=1e-9)
    np.testing.assert_allclose(predicted - lower, half, rtol=1e-9)


def test_a_fit_needs_a_residual_degree_of_freedom_and_full_rank():
    assert not P.can_fit(np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 5.0]]))  # n = p + 1
    assert P.can_fit(np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 5.0], [3.0, 1.0]]))
    collinear = np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0], [3.0, 6.0], [4.0, 8.0]])
    assert not P.can_fit(collinear) and not P.can_fit(np.ones((5, 1)))


def test_two_proxy_slopes_are_recovered_within_their_standard_errors():
    """y = 5 + 2·x1 − 1·x2 + N(0, 0.3²): each slope within 4 analytic standard errors σ√[(XᵀX)⁻¹]ᵢᵢ."""
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 2))
    y = 5 + X @ np.array([2.0, -1.0]) + rng.normal(scale=0.3, size=40)
    fit = P.ols_fit(X, y)
    design = np.column_stack([np.ones(40), X])
    se = 0.3 * np.sqrt(np.diag(np.linalg.inv(design.T @ design)))
    assert abs(fit.intercept - 5) < 4 * se[0]
    assert abs(fit.coef[0] - 2) < 4 * se[1] and abs(fit.coef[1] + 1) < 4 * se[2]


@pytest.mark.parametrize("p", [1, 2])
def test_out_of_cluster_intervals_cover_at_the_nominal_rate(p):
    """No cluster effect: each held-out point lies in its 90 % interval with probability exactly 0.9.

    500 seeds of 8 tokenizers in 4 clusters (train 6: 4 or 3 residual degrees of freedom). The mean
    of the per-seed covered fractions has a standard deviation ≤ √(0.09/500) (a mean of Bernoulli(0.9)
    variables, however correlated, has variance ≤ 0.09); tolerance 4 of those (± 0.054). The normal
    quantile instead of t gives ≈ 0.82 here (p = 1), outside the tolerance.
    """
    groups = np.repeat(list("abcd"), 2)
    fractions = []
    for seed in range(500):
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(8, p))
        y = 1 + X @ np.arange(1.0, p + 1) + rng.normal(size=8)
        result = P.leave_one_cluster_out(X, y, groups, level=0.9)
        fractions.append(np.mean((result["lower"] <= y) & (y <= result["upper"])))
    assert abs(np.mean(fractions) - 0.9) < 4 * math.sqrt(0.09 / 500)


def test_leave_one_cluster_out_never_fits_on_the_held_out_cluster():
    """An instrumented fit records its training targets: no fold sees a value of the cluster it predicts."""
    rng = np.random.default_rng(3)
    groups = np.repeat(list("abcde"), [2, 3, 2, 2, 3])
    X = rng.normal(size=(12, 1))
    y = rng.normal(size=12) + np.arange(12) * 10.0  # distinct values identify the rows
    seen = []

    def recording_fit(X_train, y_train):
        seen.append(set(y_train.tolist()))
        return P.ols_fit(X_train, y_train)

    P.leave_one_cluster_out(X, y, groups, fit=recording_fit)
    assert len(seen) == 5
    for group, training in zip(sorted(set(groups)), seen):
        assert training == set(y[groups != group].tolist())


def test_an_outlier_cluster_does_not_move_its_own_prediction():
    """y = 1 + 2x exactly except cluster z at +1000: held out, z is predicted on the line (leaked: 100s off)."""
    rng = np.random.default_rng(4)
    toks = [f"t{i}" for i in range(10)]
    clusters = pd.Series(np.repeat(list("abcdz"), 2), index=toks)
    x = rng.normal(size=10)
    y = 1 + 2 * x + rng.normal(scale=1e-3, size=10) + np.where(clusters == "z", 1000.0, 0.0)
    targets = pd.DataFrame({"tokenizer": toks, "backbone": "sit", "cfg_scale": 1.0, "value": y})
    predictions, _ = P.evaluate_study(pd.DataFrame({"x": x}, index=toks), targets, clusters)
    held = predictions[(predictions["model"] == "x") & (predictions["held_out_group"] == "z")]
    assert len(held) == 2
    np.testing.assert_allclose(held["predicted"], 1 + 2 * x[-2:], atol=0.05)


def test_nested_selection_never_sees_the_held_out_cluster():
    """Every fit of an outer fold (inner LOCO fits and the final one) leaves that fold's cluster out.

    Inner fits miss two clusters, each fold's final fit exactly one, so the recorded calls split into folds.
    """
    rng = np.random.default_rng(5)
    groups = np.repeat(list("abcde"), 3)
    X = pd.DataFrame(rng.normal(size=(15, 3)), columns=["p", "q", "r"])
    y = 2 * X["p"].to_numpy() + rng.normal(scale=0.1, size=15) + np.arange(15) * 1e-3
    calls = []

    def recording_fit(X_train, y_train):
        calls.append(set(y_train.tolist()))
        return P.ols_fit(X_train, y_train)

    result = P.nested_selection(X, y, groups, P.candidate_models(X.columns), fit=recording_fit)
    assert result is not None and set(result["fold_model"]) == {"p"}
    clusters = sorted(set(groups))
    fold, checked = 0, 0
    for training in calls:
        held_out = set(y[groups == clusters[fold]].tolist())
        assert not training & held_out, clusters[fold]
        checked += 1
        if training == set(y[groups != clusters[fold]].tolist()):  # this fold's final fit
            fold += 1
    assert fold == len(clusters) and checked == len(calls)


def test_scores_selection_and_nested_rows():
    rng = np.random.default_rng(6)
    toks = [f"t{i}" for i in range(12)]
    clusters = pd.Series(np.repeat(list("abcdef"), 2), index=toks)
    proxies = pd.DataFrame(rng.normal(size=(12, 3)), index=toks, columns=["good", "noise1", "noise2"])
    targets = pd.concat([pd.DataFrame({"tokenizer": toks, "backbone": bb, "cfg_scale": w,
                                       "value": 10 + 3 * proxies["good"].to_numpy() + rng.normal(scale=0.2, size=12)})
                         for bb in ("sit", "dit") for w in (1.0, 2.0)])
    predictions, scores = P.evaluate_study(proxies, targets, clusters)
    assert set(P.SCORE_COLUMNS) <= set(scores.columns) and set(P.PREDICTION_COLUMNS) <= set(predictions.columns)
    for _, group in scores.groupby(["backbone", "cfg_scale"]):
        singles_and_pairs = group[group["model"] != P.NESTED]
        assert len(singles_and_pairs) == 6 and group["selected"].sum() == 1
        assert group.loc[group["selected"], "r2_oc"].item() == singles_and_pairs["r2_oc"].max()
        assert "good" in group.loc[group["selected"], "model"].item()
        nested = group[group["model"] == P.NESTED].iloc[0]
        assert nested["r2_oc"] > 0.9 and nested["coverage"] >= 0.5
        assert nested["r2_oc_low"] <= nested["r2_oc"] <= nested["r2_oc_high"] <= 1
    # every tokenizer is predicted once per model, by a fit on the other 10 (its cluster of 2 held out)
    counts = predictions.groupby(["backbone", "cfg_scale", "model"]).size()
    assert (counts == 12).all() and (predictions["n_train"] == 10).all()
    assert (predictions["held_out_group"] == predictions["tokenizer"].map(clusters)).all()
    fold_models = predictions.loc[predictions["model"] == P.NESTED, "fold_model"]
    assert fold_models.str.contains("good").all()


def test_interval_formulas_of_the_scores():
    # Clopper–Pearson with every point covered: the lower bound solves p^n = α/2
    assert P.coverage_interval(6, 6, 0.9)[0] == pytest.approx(0.05 ** (1 / 6), rel=1e-9)
    assert P.coverage_interval(0, 6, 0.9)[1] == pytest.approx(1 - 0.05 ** (1 / 6), rel=1e-9)
    low, high = P.spearman_interval(0.5, 12, 0.9)
    half = stats.norm.ppf(0.95) * math.sqrt((1 + 0.125) / 9)
    assert (low, high) == pytest.approx((math.tanh(math.atanh(0.5) - half), math.tanh(math.atanh(0.5) + half)))
    y = np.arange(10.0)
    assert P.cluster_bootstrap_r2(y, y, np.repeat(list("abcde"), 2)) == (1.0, 1.0)
    assert P.r2_out_of_cluster(y, np.full(10, y.mean())) == 0.0


def test_tokenizer_cluster_prefers_a_cluster_column():
    table = pd.DataFrame({"tokenizer": ["a", "b", "c"], "regularizer": ["none", "mcos", "mcos"],
                          "cluster": ["kl", "", None]})
    assert P.tokenizer_cluster(table).to_dict() == {"a": "kl", "b": "mcos", "c": "mcos"}


def test_rank_and_prediction_of_a_new_tokenizer():
    X = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    y = np.array([1.0, 3.2, 4.8, 7.1, 9.0])
    b, a = np.polyfit(X[:, 0], y, 1)
    predicted, lower, upper = P.predict_new(X, y, [2.5])
    assert predicted == pytest.approx(a + 2.5 * b) and lower < predicted < upper
    assert P.rank_among(predicted, y) == 4  # three study values are lower (better)
    assert P.rank_among(predicted, y, "higher") == 3


# --------------------------------------------------------------------------- study tables on disk


def _blurred_latents(rng, width: float, n: int = 48) -> np.ndarray:
    """(n, 4, 8, 8) white noise blurred by a Gaussian of ``width`` tokens (wider: less high-frequency energy)."""
    from scipy.ndimage import gaussian_filter

    noise = rng.normal(size=(n, 4, 8, 8))
    return np.stack([gaussian_filter(z, sigma=(0, width, width), mode="wrap") for z in noise]).astype(np.float32)


def _metric_rows(latents: np.ndarray, names=("sec", "rmsc")) -> pd.DataFrame:
    """The rows `diffusability metrics --normalize per-channel` writes (the registry on standardised latents)."""
    import torch

    from diffusability.metrics.normalization import channel_stats, normalize_latents
    from diffusability.metrics.registry import compute_metrics

    tensor = torch.from_numpy(latents)
    return compute_metrics(normalize_latents(tensor, *channel_stats(tensor)), names=list(names))


WIDTHS = [0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5, 1.7]
REGULARIZERS = ["none", "none", "mcos", "mcos", "eq", "eq", "lcr", "lcr"]


def _write_study(directory, widths=WIDTHS, regularizers=REGULARIZERS, image_size=32, seed=0):
    """A study of len(widths) tokenizers with fd = 10 + 20·sec + N(0, 0.05²) per (backbone, scale)."""
    rng = np.random.default_rng(seed)
    tokenizers, metrics, generation, sec = [], [], [], {}
    for i, (width, regularizer) in enumerate(zip(widths, regularizers)):
        name = f"tok{i}"
        tokenizers.append({"tokenizer": name, "family": "conv-f4d4", "regularizer": regularizer, "kl_weight": 1e-6,
                           "latent_channels": 4, "downsample": 4, "image_size": image_size})
        rows = _metric_rows(_blurred_latents(rng, width))
        rows.insert(0, "tokenizer", name)
        rows["backbone"] = ""
        metrics.append(rows)
        sec[name] = rows.loc[rows["metric"] == "sec", "value"].item()
        for cfg_scale in (1.0, 2.0):
            for model, fd in (("trained", 10 + 20 * sec[name] + cfg_scale + rng.normal(scale=0.05)),
                              ("untrained", 300.0)):
                generation.append({"tokenizer": name, "backbone": "sit", "cfg_scale": cfg_scale, "model": model,
                                   "metric": "fd", "value": fd, "direction": "lower", "params": "{}", "n": 64,
                                   "seconds": 0.1})
    directory.mkdir(parents=True, exist_ok=True)
    write_parquet(pd.DataFrame(tokenizers), directory / "tokenizers.parquet")
    write_parquet(pd.concat(metrics, ignore_index=True), directory / "metrics.parquet")
    write_parquet(pd.DataFrame(generation), directory / "generation.parquet")
    return sec


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    directory = tmp_path_factory.mktemp("study") / "tables"
    _write_study(directory)
    return directory


def test_predict_cli_on_a_synthetic_study(study, tmp_path):
    """The prediction is the selected model refitted on all study tokenizers (closed-form OLS here)."""
    new = _blurred_latents(np.random.default_rng(99), 1.0)
    save_npz(tmp_path / "new.npz", latents=new)
    out = tmp_path / "prediction.parquet"
    assert main(["predict", str(tmp_path / "new.npz"), "--study", str(study), "--out", str(out)]) == 0
    table = read_parquet(out)
    assert sorted(table["cfg_scale"]) == [1.0, 2.0] and (table["tokenizer"] == "new").all()
    metrics, generation = read_parquet(study / "metrics.parquet"), read_parquet(study / "generation.parquet")
    wide = metrics.pivot_table(index="tokenizer", columns="metric", values="value")
    new_values = _metric_rows(new).set_index("metric")["value"]
    for row in table.itertuples():
        model = json.loads(row.proxies)
        assert row.model == " + ".join(model) and model == pytest.approx(new_values[list(model)].to_dict())
        y = generation[(generation["model"] == "trained") & (generation["cfg_scale"] == row.cfg_scale)]
        y = y.set_index("tokenizer")["value"]
        design = np.column_stack([np.ones(len(y)), wide.loc[y.index, list(model)].to_numpy()])
        coef, *_ = np.linalg.lstsq(design, y.to_numpy(), rcond=None)
        expected = coef @ np.r_[1.0, new_values[list(model)].to_numpy()]
        assert row.predicted == pytest.approx(expected, rel=1e-9)
        assert row.lower < row.predicted < row.upper and row.level == 0.9
        assert row.rank == 1 + int((y <= row.predicted).sum()) and row.n_study == 8
        assert row.rank_best <= row.rank <= row.rank_worst
        # fd was made from sec: the prediction lands near 10 + 20·sec(new) + scale
        assert abs(row.predicted - (10 + 20 * new_values["sec"] + row.cfg_scale)) < 0.5


def _run(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err


def test_predict_errors_name_the_file(study, tmp_path, capsys):
    save_npz(tmp_path / "wide.npz", latents=np.random.default_rng(0).normal(size=(16, 8, 8, 8)).astype(np.float32))
    code, err = _run(["predict", str(tmp_path / "wide.npz"), "--study", str(study), "--out",
                      str(tmp_path / "o.parquet")], capsys)
    assert code == 2 and "wide.npz" in err and "(8, 8, 8)" in err and "tokenizers.parquet" in err

    small = tmp_path / "small"
    _write_study(small, WIDTHS[:4], ["none", "none", "mcos", "mcos"])  # 2 clusters
    save_npz(tmp_path / "new.npz", latents=_blurred_latents(np.random.default_rng(1), 1.0))
    code, err = _run(["predict", str(tmp_path / "new.npz"), "--study", str(small), "--out",
                      str(tmp_path / "o.parquet")], capsys)
    assert code == 2 and "generation.parquet" in err and "2 clusters" in err

    old = tmp_path / "old"
    old.mkdir()
    for name in ("metrics", "generation"):
        (old / f"{name}.parquet").write_bytes((study / f"{name}.parquet").read_bytes())
    write_parquet(read_parquet(study / "tokenizers.parquet").drop(columns="image_size"), old / "tokenizers.parquet")
    code, err = _run(["predict", str(tmp_path / "new.npz"), "--study", str(old), "--out",
                      str(tmp_path / "o.parquet")], capsys)
    assert code == 2 and "tokenizers.parquet" in err and "image_size" in err

    code, err = _run(["predict", str(tmp_path / "new.npz"), "--study", str(tmp_path / "nowhere"), "--out",
                      str(tmp_path / "o.parquet")], capsys)
    assert code == 2 and "nowhere" in err


def test_new_proxies_refuse_a_different_protocol(tmp_path):
    """The study's lnc pooled foreground tokens; latents without masks would pool all tokens: an error."""
    import torch

    from diffusability.analysis.study_proxies import new_proxies
    from diffusability.errors import DiffusabilityError
    from diffusability.metrics.registry import compute_metrics

    rng = np.random.default_rng(0)
    latents = torch.from_numpy(rng.normal(size=(32, 4, 8, 8)).astype(np.float32))
    labels, masks = torch.arange(32) % 4, torch.from_numpy(rng.random((32, 8, 8)) > 0.5)
    study_rows = compute_metrics(latents, labels, masks, names=["lnc"], params={"lnc": {"k": 3}})
    study_rows.insert(0, "tokenizer", "t0")
    values = new_proxies((latents, labels, masks), "x.npz", ["lnc"], study_rows, "none", "cpu")
    assert values["lnc"] == pytest.approx(study_rows["value"].item())  # same latents, same k: same value
    with pytest.raises(DiffusabilityError, match=r"x\.npz: lnc parameters differ .*pooling"):
        new_proxies((latents, labels, None), "x.npz", ["lnc"], study_rows, "none", "cpu")


def test_predictions_command_tables_figure_and_summary(study, tmp_path):
    from diffusability.analysis.summary import prediction_section

    out = {name: tmp_path / f"{name}.parquet" for name in layout.PREDICTION_TABLES}
    figure = tmp_path / "figure.png"
    assert main(["predictions", "--tables", str(study), "--out-predictions", str(out["predictions"]),
                 "--out-scores", str(out["prediction_scores"]), "--out-figure", str(figure)]) == 0
    predictions, scores = read_parquet(out["predictions"]), read_parquet(out["prediction_scores"])
    assert set(scores["model"]) >= {"sec", "rmsc", "rmsc + sec"} and scores["selected"].sum() == 2
    assert set(predictions["held_out_group"]) == set(REGULARIZERS)
    assert figure.stat().st_size > 5000
    text = "\n".join(prediction_section(scores, "fd"))
    assert "nested" in text and "selected" in text and "| sit |" in text
    # the report (results/report.md) shows the predictions rule's figure by its path relative to results/
    link = Path(layout.prediction_figure()).relative_to(Path(layout.report()).parent).as_posix()
    assert f"]({link})" in text

    small = tmp_path / "small"
    _write_study(small, WIDTHS[:4], ["none", "none", "mcos", "mcos"])
    assert main(["predictions", "--tables", str(small), "--out-predictions", str(out["predictions"]),
                 "--out-scores", str(out["prediction_scores"]), "--out-figure", str(figure)]) == 0
    assert read_parquet(out["prediction_scores"]).empty and figure.exists()
    assert "no leave-one-cluster-out test" in "\n".join(prediction_section(read_parquet(out["prediction_scores"]),
                                                                          "fd"))


def test_prediction_tables_are_study_tables():
    assert set(layout.PREDICTION_TABLES) <= set(layout.TABLES)
    assert layout.table("predictions") == "results/tables/predictions.parquet"
