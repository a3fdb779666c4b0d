"""The study's analysis figure for figure (docs/analysis.md): exact correlation intervals, the bootstrap,
perspectives, guidance optima, pairs, seed noise, figures and their captions — on tables with known answers."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from diffusability.analysis import correlations as corr
from diffusability.analysis import guidance
from diffusability.workflow import layout
from diffusability.analysis import perspectives as persp
from diffusability.io import read_parquet, write_parquet


# --------------------------------------------------------------------------- closed forms and scipy


def with_correlation(x: np.ndarray, r: float, seed: int = 0) -> np.ndarray:
    """y with Pearson r(x, y) = r exactly: y = x̃ + e, e centred and orthogonal to x̃ with |e| = |x̃|·√(1/r² − 1)."""
    xc = x - x.mean()
    e = np.random.default_rng(seed).normal(size=len(x))
    e -= e.mean()
    e -= (e @ xc) / (xc @ xc) * xc
    e *= np.linalg.norm(xc) * math.sqrt(1 / r ** 2 - 1) / np.linalg.norm(e)
    return np.sign(r) * xc + e + 10.0


@pytest.mark.parametrize("r, n", [(0.8, 12), (-0.35, 30), (0.97, 5)])
def test_pearson_r_and_fisher_interval_equal_closed_form_and_scipy(r, n):
    x = np.linspace(0.0, 3.0, n) ** 1.5
    y = with_correlation(x, r)
    row = corr.correlation_row(x, y, "pearson", draws=0)
    assert row["r"] == pytest.approx(r, abs=1e-12)
    reference = stats.pearsonr(x, y).confidence_interval(0.95)
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx((reference.low, reference.high), abs=1e-12)
    half = stats.norm.ppf(0.975) / math.sqrt(n - 3)
    assert row["ci95_low"] == pytest.approx(math.tanh(math.atanh(r) - half), abs=1e-12)
    assert row["p_val"] == pytest.approx(stats.pearsonr(x, y).pvalue, rel=1e-12)
    assert math.isnan(row["boot_low"])  # draws = 0: no bootstrap


def test_spearman_closed_forms_and_bonett_wright_interval():
    x = np.arange(8.0)
    assert corr.correlation_row(x, np.exp(x), "spearman", draws=0)["r"] == pytest.approx(1.0)
    assert corr.correlation_row(x, -(x ** 3), "spearman", draws=0)["r"] == pytest.approx(-1.0)
    y = np.array([0.0, 2.0, 1.0, 3.0, 5.0, 4.0, 7.0, 6.0])   # three adjacent swaps: Σd² = 6
    row = corr.correlation_row(x, y, "spearman", draws=0)
    rho = 1 - 6 * 6 / (8 * (64 - 1))
    assert row["r"] == pytest.approx(rho, abs=1e-12)
    half = stats.norm.ppf(0.975) * math.sqrt((1 + rho ** 2 / 2) / 5)
    assert (row["ci95_low"], row["ci95_high"]) == pytest.approx(
        (math.tanh(math.atanh(rho) - half), math.tanh(math.atanh(rho) + half)), abs=1e-12)


def test_perfect_and_too_small_correlations():
    x = np.arange(6.0)
    row = corr.correlation_row(x, 2 * x + 1, "pearson", draws=100)
    assert row["r"] == pytest.approx(1.0) and (row["ci95_low"], row["ci95_high"]) == pytest.approx((1.0, 1.0))
    assert corr.correlation_row(x[:3], x[:3], "pearson") is None            # n < 4
    assert corr.correlation_row(x, np.ones(6), "pearson") is None           # constant target
    nan_x = np.array([0.0, 1.0, np.nan, 3.0, 4.0, 5.0])
    assert corr.correlation_row(nan_x, x, "pearson", draws=0)["n"] == 5     # a missing proxy value is left out


# --------------------------------------------------------------------------- the bootstrap


def test_bootstrap_coverage_on_a_known_correlation():
    """Percentile intervals over 300 bivariate-normal studies (ρ = 0.5, n = 40) cover ρ about 95 % of the time;
    the Fisher-z interval too (its coverage is exact for normal data up to the z approximation)."""
    rho, n, studies = 0.5, 40, 300
    rng = np.random.default_rng(7)
    covered = fisher = 0
    for study in range(studies):
        x = rng.normal(size=n)
        y = rho * x + math.sqrt(1 - rho ** 2) * rng.normal(size=n)
        low, high = corr.bootstrap_interval(x, y, "pearson", draws=400, seed=study)
        covered += low <= rho <= high
        a, b = corr.fisher_interval(np.corrcoef(x, y)[0, 1], n)
        fisher += a <= rho <= b
    assert 0.89 <= covered / studies <= 0.99, covered / studies
    assert 0.91 <= fisher / studies <= 0.99, fisher / studies


def test_bootstrap_is_deterministic_and_seed_resampling_reduces_to_the_plain_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=15)
    y = x + rng.normal(size=15)
    plain = corr.bootstrap_interval(x, y, "spearman", draws=300)
    assert corr.bootstrap_interval(x, y, "spearman", draws=300) == plain
    # three identical seeds per tokenizer: resampling seeds changes nothing
    assert corr.bootstrap_interval(x, y, "spearman", draws=300, y_seeds=np.repeat(y[:, None], 3, axis=1)) == plain
    # one seed: the plain bootstrap
    assert corr.bootstrap_interval(x, y, "spearman", draws=300, y_seeds=y[:, None]) == plain


def test_seed_resampling_draws_only_each_tokenizers_own_seeds():
    """With seed noise the two-stage interval widens; NaN padding (fewer seeds for some) is never drawn."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=20)
    truth = x + 0.3 * rng.normal(size=20)
    y_seeds = truth[:, None] + rng.normal(scale=1.5, size=(20, 3))
    y_seeds[::2, 2] = np.nan                                  # every other tokenizer has two seeds
    y = np.nanmean(y_seeds, axis=1)
    low, high = corr.bootstrap_interval(x, y, draws=500, y_seeds=y_seeds)
    plain_low, plain_high = corr.bootstrap_interval(x, y, draws=500)
    assert np.isfinite([low, high]).all() and high - low > 0.8 * (plain_high - plain_low)


# --------------------------------------------------------------------------- a synthetic study

TOKENIZERS = [f"t{i}" for i in range(8)]
QUALITY = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
SCALES = (1.0, 1.5, 2.0, 3.0)


def best_scale(i: int) -> float:
    return 1.5 if i % 2 else 2.0


def study(seeds: int = 1):
    """8 tokenizers in 2 clusters; gFID = 10 + quality + (cfg − the tokenizer's optimum)² (+ seed noise)."""
    tokenizers = pd.DataFrame({"tokenizer": TOKENIZERS, "family": "conv-f4d4", "regularizer": ["none", "mcos"] * 4,
                               "kl_weight": 1e-6, "latent_channels": 4, "downsample": 4})
    proxies = {"viv_uniform": (QUALITY + np.array([0.3, -0.2, 0.1, 0.0, -0.3, 0.2, 0.0, 0.1]), "lower"),
               "lnc": (-QUALITY ** 2, "higher"),
               "srss": (np.array([1.0, 3.0, 0.0, 2.0, 5.0, 4.0, 7.0, 6.0]), "higher"),
               "fi": (np.cos(QUALITY), "none")}
    metrics = pd.DataFrame([{"tokenizer": t, "metric": m, "value": float(v[i]), "direction": d, "params": "{}",
                             "n": 10, "backbone": ""} for m, (v, d) in proxies.items()
                            for i, t in enumerate(TOKENIZERS)])
    reconstruction = pd.DataFrame([{"tokenizer": t, "metric": m, "value": v, "direction": "lower", "params": "{}",
                                    "n": 10} for i, t in enumerate(TOKENIZERS)
                                   for m, v in (("rfd", 3.0 + (i % 3)), ("rfd_untrained", 300.0))])
    rng = np.random.default_rng(3)
    rows = []
    for i, t in enumerate(TOKENIZERS):
        for cfg in SCALES:
            for s in range(seeds):
                fd = 10 + QUALITY[i] + (cfg - best_scale(i)) ** 2 + (rng.normal(scale=0.5) if seeds > 1 else 0.0)
                base = {"tokenizer": t, "backbone": "sit", "cfg_scale": cfg, "model": "trained", "params": "{}",
                        "n": 100, **({"seed": s} if seeds > 1 else {})}
                rows += [{**base, "metric": "fd", "value": fd, "direction": "lower"},
                         {**base, "metric": "is", "value": 100 - 3 * fd, "direction": "higher"},
                         {**base, "metric": "local_straightness", "value": 1 - 0.01 * fd, "direction": "higher"},
                         {**base, "metric": "global_efficiency", "value": 1 - 0.02 * fd, "direction": "higher"}]
                rows += [{**base, "metric": "length_ratio", "value": 1 + 0.1 * k * (i + 1) / 8, "direction": "",
                          "params": json.dumps({"segment": k, "t_start": (k - 1) / 4, "t_end": k / 4})}
                         for k in range(1, 5)]
        rows.append({"tokenizer": t, "backbone": "sit", "cfg_scale": 1.0, "model": "untrained", "params": "{}",
                     "n": 100, "metric": "fd", "value": 400.0, "direction": "lower"})
    curve = pd.DataFrame([{"tokenizer": t, "metric": "viv_curve", "value": 2.0 - s, "direction": "lower",
                           "params": json.dumps({"t": s}), "n": 10, "backbone": ""} for t in TOKENIZERS
                          for s in (0.0, 0.5, 1.0)])
    return {"tokenizers": tokenizers, "metrics": pd.concat([metrics, curve], ignore_index=True),
            "reconstruction": reconstruction, "generation": pd.DataFrame(rows)}


def correlate(t, **kwargs):
    families = t["tokenizers"].set_index("tokenizer")["family"]
    proxies = corr.proxy_matrix(t["metrics"], t["reconstruction"])
    directions = corr.directions(t["metrics"], t["reconstruction"])
    return proxies, corr.correlate(proxies, t["generation"], families, "fd", ("pearson", "spearman"), directions,
                                   **kwargs)


def test_correlations_cover_every_target_transport_and_the_direction_check():
    t = study()
    proxies, table = correlate(t, bootstrap=200)
    assert set(table["target"]) == {"fd", "is"}                  # fdr6 has no rows: not correlated
    one = table[(table["cfg_scale"] == 1.0) & (table["method"] == "pearson")].set_index(["target", "proxy"])
    fd = t["generation"].query("metric == 'fd' and cfg_scale == 1.0 and model == 'trained'").set_index("tokenizer")["value"]
    assert one.loc[("fd", "latent/viv_uniform"), "r"] == pytest.approx(
        stats.pearsonr(proxies["latent/viv_uniform"].reindex(fd.index), fd).statistic, abs=1e-12)
    # directions: VIV (lower) and gFID (lower) → r > 0 as predicted; LNC (higher) → r < 0 as predicted;
    # SRSS follows quality only loosely, fi has no direction (no check), IS (higher) flips every expectation
    assert bool(one.loc[("fd", "latent/viv_uniform"), "sign_ok"]) and one.loc[("fd", "latent/viv_uniform"),
                                                                                  "expected_sign"] == 1
    assert bool(one.loc[("fd", "latent/lnc"), "sign_ok"]) and one.loc[("fd", "latent/lnc"), "expected_sign"] == -1
    assert pd.isna(one.loc[("fd", "latent/fi"), "sign_ok"]) and one.loc[("fd", "latent/fi"), "expected_sign"] == 0
    assert one.loc[("is", "latent/viv_uniform"), "expected_sign"] == -1
    assert bool(one.loc[("is", "latent/viv_uniform"), "sign_ok"])
    # the trajectory metrics of each group's own models are correlated too (post hoc, the study's Fig. 9)
    assert one.loc[("fd", "trajectory/local_straightness"), "r"] == pytest.approx(-1.0)
    assert one.loc[("fd", "trajectory/local_straightness"), "perspective"] == "transport (post hoc)"
    finite = table[["r", "ci95_low", "ci95_high", "p_val", "boot_low", "boot_high"]].to_numpy(float)
    assert np.isfinite(finite).all()
    assert (table["ci95_low"] <= table["r"] + 1e-12).all() and (table["r"] <= table["ci95_high"] + 1e-12).all()


def test_seed_repeats_use_the_mean_and_report_the_noise():
    t = study(seeds=3)
    _, table = correlate(t, bootstrap=100)
    row = table[(table["target"] == "fd") & (table["cfg_scale"] == 1.0) & (table["method"] == "pearson")
                & (table["proxy"] == "latent/viv_uniform")].iloc[0]
    fd = t["generation"].query("metric == 'fd' and cfg_scale == 1.0 and model == 'trained'").groupby("tokenizer")["value"].mean()
    viv = t["metrics"].query("metric == 'viv_uniform'").set_index("tokenizer")["value"].reindex(fd.index)
    assert row["r"] == pytest.approx(stats.pearsonr(viv, fd).statistic, abs=1e-12) and row["n_seeds"] == 3
    families = t["tokenizers"].set_index("tokenizer")["family"]
    noise = corr.seed_noise(t["generation"], families, ["fd"])
    one = noise[noise["cfg_scale"] == 1.0].iloc[0]
    values = t["generation"].query("metric == 'fd' and cfg_scale == 1.0 and model == 'trained'")
    within = values.groupby("tokenizer")["value"].var(ddof=1).mean()        # equal seed counts: pooled = mean
    assert one["seed_sd"] == pytest.approx(math.sqrt(within), rel=1e-12)
    assert one["between_sd"] == pytest.approx(fd.std(ddof=1), rel=1e-12)
    assert one["ratio"] == pytest.approx(one["between_sd"] / one["seed_sd"]) and one["n_seeds_max"] == 3
    # one seed: no noise estimate, NaN rather than a made-up number
    assert corr.seed_noise(study()["generation"], families, ["fd"])["seed_sd"].isna().all()


# --------------------------------------------------------------------------- perspectives (Fig. 4)


def test_every_registry_metric_has_a_perspective():
    """Every registry entry names its perspective, and the study's metrics sit where its Fig. 1 puts them."""
    from diffusability.metrics.registry import METRICS, MODEL_METRICS, TOKENIZER_METRICS, TRAJECTORY_METRICS

    registered = set(METRICS) | set(TOKENIZER_METRICS) | set(MODEL_METRICS) | set(TRAJECTORY_METRICS)
    assert set(persp.PERSPECTIVES) == registered
    assert set(persp.PERSPECTIVES.values()) <= set(persp.PAPER_PERSPECTIVES) | set(persp.OTHER_PERSPECTIVES)
    # the study's grouping (its Fig. 1 and Sec. 3), written here independently of the registry
    study = {"velocity ambiguity": ["viv_uniform", "viv_logit_normal"], "semantic separability": ["lnc"],
             "spatial structure": ["lds", "cds", "srss"], "latent smoothness": ["sec"],
             "manifold continuity": ["ifid"], "latent uniformity": ["uniformity_cv", "uniformity_gini"],
             "affine equivariance": ["rotate_error", "scale_error"]}
    assert list(study) == list(persp.PAPER_PERSPECTIVES)
    for perspective, metrics in study.items():
        for metric in metrics:
            assert persp.perspective_of(f"latent/{metric}") == perspective, metric
    assert persp.perspective_of("latent/sec_r0.25") == "latent smoothness"
    assert persp.perspective_of("reconstruction/psnr") == "reconstruction"
    assert persp.perspective_of("latent/something_new") == "other"


def test_a_metric_without_a_valid_perspective_cannot_be_registered():
    from diffusability.errors import DiffusabilityError
    from diffusability.metrics.registry import MetricSpec

    with pytest.raises(DiffusabilityError, match="perspective 'smoothness' is none of"):
        MetricSpec("new", "sec", "smoothness", "lower", "a typo in the perspective")
    with pytest.raises(DiffusabilityError, match="direction 'down'"):
        MetricSpec("new", "sec", "latent smoothness", "down", "a typo in the direction")


def test_perspective_ranking_on_a_constructed_table():
    """Best |r| per perspective, the study's seven ranked first by it, then the other groups."""
    proxies = {"latent/viv_uniform": 0.6, "latent/viv_logit_normal": 0.7, "latent/lnc": -0.9, "latent/srss": -0.5,
               "latent/lds": 0.2, "latent/sec": 0.3, "latent/fi": 0.95, "reconstruction/rfd": 0.4,
               "trajectory/local_straightness": -0.99}
    table = pd.DataFrame({"target": "fd", "family": "all", "backbone": "sit", "cfg_scale": 1.0, "method": "pearson",
                          "proxy": list(proxies), "direction": "", "n": 10, "r": list(proxies.values()),
                          "ci95_low": -1.0, "ci95_high": 1.0})
    out = persp.perspective_table(table)
    assert "trajectory/local_straightness" not in set(out["proxy"])      # post hoc, not a latent property
    best = out[out["best"]].set_index("perspective")
    assert best["metric"].to_dict() == {"semantic separability": "lnc", "velocity ambiguity": "viv_logit_normal",
                                        "spatial structure": "srss", "latent smoothness": "sec",
                                        "fisher geometry": "fi", "reconstruction": "rfd"}
    assert best["rank"].sort_values().index.tolist() == ["semantic separability", "velocity ambiguity",
                                                         "spatial structure", "latent smoothness",
                                                         "fisher geometry", "reconstruction"]
    assert out.groupby("perspective")["best"].sum().eq(1).all()
    assert set(persp.COLUMNS) <= set(out.columns)
    assert [p for p, _ in persp.main_proxies(out, "fd", "all", "sit", 1.0)] == [
        "semantic separability", "velocity ambiguity", "spatial structure", "latent smoothness"]


def test_pairs_of_main_proxies_equal_least_squares():
    t = study()
    families = t["tokenizers"].set_index("tokenizer")["family"]
    proxies, table = correlate(t, bootstrap=0)
    pairs = corr.perspective_pairs(proxies, t["generation"], families, persp.perspective_table(table))
    pair = {"latent/lnc", "latent/viv_uniform"}
    row = pairs[(pairs["cfg_scale"] == 2.0) & pairs["proxy_1"].isin(pair) & pairs["proxy_2"].isin(pair)]
    assert len(row) == 1 and len(pairs[pairs["cfg_scale"] == 2.0]) == 3   # 3 of the study's perspectives: 3 pairs
    row = row.iloc[0]
    y = t["generation"].query("metric == 'fd' and cfg_scale == 2.0 and model == 'trained'").set_index("tokenizer")["value"]
    X = np.column_stack([np.ones(8), proxies.loc[y.index, row["proxy_1"]], proxies.loc[y.index, row["proxy_2"]]])
    coef, *_ = np.linalg.lstsq(X, y.to_numpy(), rcond=None)
    residual = y.to_numpy() - X @ coef
    r2 = 1 - residual @ residual / ((y - y.mean()) ** 2).sum()
    assert row["r2"] == pytest.approx(r2, abs=1e-10) and row["coef_2"] == pytest.approx(coef[2], rel=1e-8)
    assert row["adj_r2"] == pytest.approx(1 - (1 - r2) * 7 / 5, abs=1e-10)
    assert row["r2_1"] == pytest.approx(stats.pearsonr(X[:, 1], y).statistic ** 2, abs=1e-10)
    assert row["r_12"] == pytest.approx(stats.pearsonr(X[:, 1], X[:, 2]).statistic, abs=1e-12)


# --------------------------------------------------------------------------- guidance (Figs. 7, 25)


def test_guidance_optima_and_the_correlation_at_the_optimum():
    t = study()
    families = t["tokenizers"].set_index("tokenizer")["family"]
    optima = guidance.optima(t["generation"], families, ["fd", "is"])
    fd = optima[optima["target"] == "fd"].set_index("tokenizer")
    assert fd["best_scale"].to_dict() == {tok: best_scale(i) for i, tok in enumerate(TOKENIZERS)}
    assert fd["best_value"].to_numpy() == pytest.approx(10 + QUALITY)
    assert fd["in_range"].all() and (fd["n_scales_in_range"] == 2).all() and (fd["n_scales"] == 4).all()
    # IS is higher-is-better: its optimum is the same scale (IS = 100 − 3 gFID)
    assert optima[optima["target"] == "is"].set_index("tokenizer")["best_scale"].equals(fd["best_scale"])
    proxies = corr.proxy_matrix(t["metrics"], t["reconstruction"])
    table = guidance.optimum_correlations(proxies, optima, t["generation"], ("pearson",),
                                          corr.directions(t["metrics"], t["reconstruction"]), bootstrap=100)
    row = table[(table["target"] == "fd") & (table["proxy"] == "latent/viv_uniform")].iloc[0]
    assert row["r"] == pytest.approx(stats.pearsonr(proxies.loc[fd.index, "latent/viv_uniform"],
                                                    fd["best_value"]).statistic, abs=1e-12)
    assert bool(row["sign_ok"]) and (row["scale_low"], row["scale_high"]) == (1.5, 2.0)
    # an optimum outside the range is reported as such
    moved = t["generation"].copy()
    moved.loc[(moved["tokenizer"] == "t0") & (moved["cfg_scale"] == 3.0) & (moved["metric"] == "fd"), "value"] = 0.0
    assert not guidance.optima(moved, families, ["fd"]).set_index("tokenizer").loc["t0", "in_range"]


# --------------------------------------------------------------------------- the commands, figures, captions


def run(command: list[str]):
    from diffusability.analysis import commands

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(command)
    args.func(args)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """The synthetic study with two seeds, through the correlate command (tables as the workflow writes them)."""
    directory = tmp_path_factory.mktemp("tables")
    for name, frame in study(seeds=2).items():
        write_parquet(frame, directory / f"{name}.parquet")
    run(["correlate", "--tables", str(directory), "--spec", json.dumps({"bootstrap": 100}),
         "--out-correlations", str(directory / "correlations.parquet"),
         "--out-regressions", str(directory / "regressions.parquet")])
    for name in layout.PREDICTION_TABLES:
        write_parquet(pd.DataFrame(), directory / f"{name}.parquet")
    return directory


def test_correlate_writes_every_analysis_table(tables):
    for name in layout.ANALYSIS_TABLES:
        assert (tables / f"{name}.parquet").is_file(), name
    perspectives = read_parquet(tables / "perspectives.parquet")
    assert set(persp.COLUMNS) <= set(perspectives.columns) and len(perspectives)
    seeds = read_parquet(tables / "seeds.parquet")
    assert (seeds["n_seeds_max"] == 2).all() and np.isfinite(seeds["ratio"]).all()
    assert len(read_parquet(tables / "guidance_optima.parquet")) == 2 * len(TOKENIZERS)   # fd and is


@pytest.fixture(scope="module")
def drawn(tables, tmp_path_factory):
    """The study's figures drawn by one process (read by the tests below, drawn once)."""
    out = tmp_path_factory.mktemp("figures") / "one"
    run(["figures", "--tables", str(tables), "--out-dir", str(out)])
    return out


def test_figures_of_the_study_and_their_captions(drawn):
    from diffusability.analysis import figures

    out = drawn
    names = sorted(p.stem for p in out.glob("*.png"))
    expected = {"fig4_perspectives_fd", "fig4_perspectives_is", "fig4_intervals", "fig5_backbones_fd",
                "fig7_guidance_fd", "fig8_pairs", "fig9_transport_fd", "fig25_guidance_curves_fd", "seed_noise_fd",
                "correlation_heatmap", "correlation_heatmap_is", "trained_vs_untrained", "length_ratio_t0",
                "scatter_latent_viv_uniform"}
    assert expected <= set(names), expected - set(names)
    assert "fig6_families_fd" not in names                                  # one family: no per-family figure
    for name in names:
        assert figures.caption(name), name
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the report template gives every file its own caption
    import jinja2

    class Snakemake:
        params = argparse.Namespace(captions=figures.caption_list())
        wildcards = argparse.Namespace(name="fig8_pairs")

    from pathlib import Path

    template = (Path(__file__).resolve().parents[1] / "workflow" / "report" / "figures.rst").read_text()
    text = jinja2.Environment().from_string(template).render(snakemake=Snakemake)
    assert figures.rst_escape(figures.CAPTIONS["fig8_pairs"]) in text and "fig8_pairs.png" in text
    Snakemake.wildcards = argparse.Namespace(name="correlation_heatmap_is")
    assert figures.rst_escape(figures.CAPTIONS["correlation_heatmap"]) in jinja2.Environment().from_string(
        template).render(snakemake=Snakemake)
    # every caption is valid reStructuredText that reads back as the caption (|r| is no substitution)
    import docutils.core
    import docutils.utils

    for prefix, text in figures.caption_list():
        Snakemake.wildcards = argparse.Namespace(name=prefix + "x")
        rendered = jinja2.Environment().from_string(template).render(snakemake=Snakemake)
        document = docutils.core.publish_doctree(rendered, settings_overrides={"report_level": 5,
                                                                              "halt_level": 5})
        problems = [node.astext() for node in document.findall(docutils.nodes.system_message)]
        assert not problems, (prefix, problems)
        assert figures.CAPTIONS[prefix] in document.astext().replace("\n", " "), prefix


def test_figures_drawn_in_two_processes_are_the_same_files(tables, drawn, tmp_path):
    """--jobs 2 forks the drawing; every figure is drawn from the same tables, so the bytes are those of one process."""
    run(["figures", "--tables", str(tables), "--out-dir", str(tmp_path / "two"), "--jobs", "2"])
    one = {p.name: p.read_bytes() for p in drawn.glob("*.png")}
    two = {p.name: p.read_bytes() for p in (tmp_path / "two").glob("*.png")}
    assert sorted(one) == sorted(two) and len(one) > 20
    assert [name for name in one if one[name] != two[name]] == []


def test_summary_reports_perspectives_guidance_pairs_and_seeds(tables, tmp_path):
    out = tmp_path / "report.md"
    run(["summarize", "--tables", str(tables), "--out", str(out)])
    text = out.read_text()
    for heading in ("Which perspective matters?", "Correlation with generation fd", "direction check",
                    "Guidance: each tokenizer's best scale", "Pairs of perspectives", "Seed noise", "Figures"):
        assert heading in text, heading
    assert "boot95" in text and "sign as predicted" in text


def test_analysis_schema_defaults_equal_the_command_defaults():
    from diffusability.analysis.commands import analysis_settings
    from diffusability.workflow.config import load_schema

    schema = load_schema()["properties"]["analysis"]["properties"]
    defaults = {key: value["default"] for key, value in schema.items()}
    settings = analysis_settings({})
    assert {key: list(v) if isinstance(v, tuple) else v for key, v in settings.items()} == defaults
