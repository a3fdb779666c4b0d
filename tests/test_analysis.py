"""Analysis: layout round trip, aggregation, and correlations/R² against direct formulas."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from diffusability.analysis import correlations as corr
from diffusability.analysis import tables
from diffusability.workflow import layout
from diffusability.io import write_parquet

TOKS = ["a", "b", "c", "d", "e", "f"]


def _rows(values: dict[str, float], direction="lower") -> pd.DataFrame:
    return pd.DataFrame([{"metric": m, "value": float(v), "direction": direction, "params": "{}", "n": 10,
                          "seconds": 0.1} for m, v in values.items()])


def test_layout_round_trip():
    assert layout.parse("generation", layout.generation_rows("kl-1e-3", "sit-t", layout.format_cfg(1.5))) == (
        "kl-1e-3", "sit-t", "0", "1.50")
    assert layout.parse("trajectory", layout.trajectory_rows("a", "b", "2.00", "12")) == ("a", "b", "12", "2.00")
    assert layout.parse("metrics", layout.latent_metric_rows("mcos+mdms")) == ("mcos+mdms",)
    with pytest.raises(ValueError):
        layout.parse("generation", "results/generation/a/b/c.parquet")


@pytest.fixture()
def study(tmp_path, monkeypatch):
    """Per-job rows for 6 tokenizers × 1 backbone × 2 scales with a known linear relation."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    proxy = rng.normal(size=len(TOKS))
    other = rng.normal(size=len(TOKS))
    truth = {}
    for i, tok in enumerate(TOKS):
        write_parquet(_rows({"viv_uniform": proxy[i], "sec": other[i]}), layout.latent_metric_rows(tok))
        write_parquet(_rows({"rfd": 3 + other[i] ** 2, "rfd_untrained": 300.0}), layout.reconstruction_rows(tok))
        for cfg in ("1.00", "2.00"):
            fd = 10 + 2 * proxy[i] + 0.5 * other[i] + rng.normal(scale=0.3) + (cfg == "2.00")
            truth[(tok, cfg)] = fd
            write_parquet(_rows({"fd": fd, "is": 2.0}), layout.generation_rows(tok, "sit", cfg))
        write_parquet(_rows({"fd": 500.0}), layout.untrained_generation_rows(tok, "sit"))
    spec = {tok: {"family": "conv-f4d4", "regularizer": "none", "kl_weight": 1e-6, "latent_channels": 4,
                  "downsample": 4, "architecture": "conv", "regularizer_params": {}} for tok in TOKS}
    t = {
        "tokenizers": tables.tokenizer_table(spec),
        "metrics": tables.metrics_table(layout.keyed("metrics", [layout.latent_metric_rows(t) for t in TOKS])),
        "reconstruction": tables.reconstruction_table(
            layout.keyed("reconstruction", [layout.reconstruction_rows(t) for t in TOKS])),
        "generation": tables.generation_table(
            layout.keyed("generation", [layout.generation_rows(t, "sit", c) for t in TOKS for c in ("1.00", "2.00")]),
            untrained=layout.keyed("untrained", [layout.untrained_generation_rows(t, "sit") for t in TOKS])),
    }
    return t, proxy, other, truth


def test_aggregation_keys_and_models(study):
    t, *_ = study
    gen = t["generation"]
    assert set(gen["model"]) == {"trained", "untrained"}
    assert gen.loc[gen["model"] == "untrained", "cfg_scale"].eq(1.0).all()
    assert len(gen[(gen["model"] == "trained") & (gen["metric"] == "fd")]) == 12
    assert list(t["metrics"].columns[:2]) == ["tokenizer", "metric"]


def test_pearson_matches_direct_formula(study):
    t, proxy, other, truth = study
    families = t["tokenizers"].set_index("tokenizer")["family"]
    proxies = corr.proxy_matrix(t["metrics"], t["reconstruction"])
    assert "reconstruction/rfd_untrained" not in proxies.columns
    table = corr.correlate(proxies, t["generation"], families, "fd", ("pearson", "spearman"),
                           corr.directions(t["metrics"], t["reconstruction"]))
    row = table[(table["proxy"] == "latent/viv_uniform") & (table["cfg_scale"] == 1.0)
                & (table["method"] == "pearson")].iloc[0]
    y = np.array([truth[(tok, "1.00")] for tok in TOKS])
    r = np.corrcoef(proxy, y)[0, 1]
    assert row.r == pytest.approx(r, rel=1e-12)
    n = len(TOKS)
    half = 1.959963984540054 / math.sqrt(n - 3)
    # exact (not rounded): the closed form and scipy's own interval
    assert row.ci95_low == pytest.approx(math.tanh(math.atanh(r) - half), abs=1e-12)
    assert row.ci95_high == pytest.approx(math.tanh(math.atanh(r) + half), abs=1e-12)
    interval = stats.pearsonr(proxy, y).confidence_interval(0.95)
    assert (row.ci95_low, row.ci95_high) == pytest.approx((interval.low, interval.high), abs=1e-12)
    assert row.boot_low <= row.r <= row.boot_high and bool(row.sign_ok)  # viv (lower) ~ FD (lower): r > 0
    t_stat = r * math.sqrt((n - 2) / (1 - r * r))
    assert row.p_val == pytest.approx(2 * stats.t.sf(abs(t_stat), n - 2), rel=1e-6)
    spearman = table[(table["proxy"] == "latent/viv_uniform") & (table["cfg_scale"] == 1.0)
                     & (table["method"] == "spearman")].iloc[0]
    assert spearman.r == pytest.approx(stats.spearmanr(proxy, y).statistic, rel=1e-12)


def test_two_metric_r2_matches_least_squares(study):
    t, proxy, other, truth = study
    families = t["tokenizers"].set_index("tokenizer")["family"]
    proxies = corr.proxy_matrix(t["metrics"], t["reconstruction"])
    reg = corr.pairwise_regressions(proxies, t["generation"], families, "fd")
    row = reg[(reg["proxy_1"] == "latent/sec") & (reg["proxy_2"] == "latent/viv_uniform")
              & (reg["cfg_scale"] == 2.0)].iloc[0]
    y = np.array([truth[(tok, "2.00")] for tok in TOKS])
    X = np.column_stack([np.ones(len(TOKS)), other, proxy])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    residual = y - X @ coef
    r2 = 1 - residual @ residual / ((y - y.mean()) @ (y - y.mean()))
    assert row.r2 == pytest.approx(r2, rel=1e-9)
    assert row.coef_2 == pytest.approx(coef[2], rel=1e-9)


def test_constant_proxy_is_skipped_not_nan(study):
    t, *_ = study
    families = t["tokenizers"].set_index("tokenizer")["family"]
    proxies = corr.proxy_matrix(t["metrics"], t["reconstruction"])
    proxies["latent/constant"] = 1.0
    table = corr.correlate(proxies, t["generation"], families, "fd")
    assert "latent/constant" not in set(table["proxy"])
    assert np.isfinite(table[["r", "ci95_low", "ci95_high", "p_val"]].to_numpy()).all()


def test_figures_and_summary(study, tmp_path):
    from diffusability.analysis import figures
    from diffusability.analysis.summary import summarize

    t, *_ = study
    families = t["tokenizers"].set_index("tokenizer")["family"]
    proxies = corr.proxy_matrix(t["metrics"], t["reconstruction"])
    t["correlations"] = corr.correlate(proxies, t["generation"], families, "fd")
    t["regressions"] = corr.pairwise_regressions(proxies, t["generation"], families, "fd")
    paths = figures.scatter_figures(proxies, t["generation"], t["correlations"], "fd", tmp_path)
    paths.append(figures.trained_vs_untrained(t["reconstruction"], t["generation"], "fd", tmp_path))
    paths.append(figures.correlation_heatmap(t["correlations"], tmp_path))
    assert all(p.exists() and p.stat().st_size > 1000 for p in paths)
    text = summarize(t, "fd", {"git_commit": "abc"})
    assert "latent/viv_uniform" in text and "untrained" in text
    json.dumps(text)


def test_proportional_duplicates_are_dropped():
    proxies = pd.DataFrame({"latent/viv": [1.0, 2.0, 4.0], "latent/viv_per_dim": [0.5, 1.0, 2.0],
                            "latent/other": [1.0, 2.0, 5.0], "latent/negated": [-1.0, -2.0, -4.0]},
                           index=["a", "b", "c"])
    kept = corr.drop_proportional_duplicates(proxies)
    assert list(kept.columns) == ["latent/viv", "latent/other", "latent/negated"]


def test_curves_are_not_proxies(study):
    t, *_ = study
    curve = pd.DataFrame([{"tokenizer": tok, "metric": "viv_curve", "value": float(i), "direction": "lower",
                           "params": json.dumps({"t": i / 4}), "n": 10, "seconds": 0.0}
                          for tok in TOKS for i in range(5)])
    metrics = pd.concat([t["metrics"], curve], ignore_index=True)
    proxies = corr.proxy_matrix(metrics, t["reconstruction"])
    assert "latent/viv_curve" not in proxies.columns and "latent/viv_uniform" in proxies.columns


def test_tokenizer_table_takes_the_latent_shape_from_each_tokenizers_config(tmp_path):
    """A pretrained entry's architecture and latent shape come from its imported config.json (the study
    config's defaults would say f4d4); an explicit family is kept, a missing one is named from them."""
    from diffusability.io import write_json

    spec = {name: {"family": family, "regularizer": "none", "kl_weight": 0.0, "latent_channels": 4, "downsample": 4,
                   "architecture": "conv", "regularizer_params": {}}
            for name, family in (("sd-vae", None), ("mine", "my-family"), ("unbuilt", None))}
    write_json(tmp_path / "sd-vae" / "config.json", {"architecture": "conv", "channel_mult": [1, 2, 4, 4],
                                                      "latent_channels": 4, "patch_size": 16})
    write_json(tmp_path / "mine" / "config.json", {"architecture": "vit", "channel_mult": [1], "latent_channels": 32,
                                                    "patch_size": 16})
    table = tables.tokenizer_table(spec, [tmp_path / "sd-vae" / "config.json", tmp_path / "mine" / "config.json"])
    rows = table.set_index("tokenizer")
    assert rows.loc["sd-vae", "family"] == "conv-f8d4" and rows.loc["sd-vae", "downsample"] == 8
    assert rows.loc["mine", "family"] == "my-family" and rows.loc["mine", "latent_channels"] == 32
    assert rows.loc["mine", "downsample"] == 16 and rows.loc["mine", "architecture"] == "vit"
    assert rows.loc["unbuilt", "family"] == "conv-f4d4"  # no config.json given: the study config's values
