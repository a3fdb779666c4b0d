"""The trajectory length-ratio figure (ρ_k with the VIV(t) overlay) on synthetic tables."""

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from diffusability.analysis import commands as analysis_commands
from diffusability.analysis import figures
from diffusability.io import write_parquet

K = 5
TIMES = np.linspace(0.0, 1.0, K + 1) ** 2  # a non-uniform grid: t_start must come from the params


def rho(tok_index, cfg):
    return 1.0 + 0.1 * tok_index + 0.05 * cfg * np.arange(1, K + 1)


def generation_table():
    rows = []
    for i, tok in enumerate(["kl", "mcos"]):
        for bb in ("sit", "ldit"):
            for cfg in (1.0, 2.5):
                # rows in shuffled segment order: the figure must sort by segment
                for k in (3, 1, 5, 2, 4):
                    rows.append({"tokenizer": tok, "backbone": bb, "cfg_scale": cfg, "model": "trained",
                                 "metric": "length_ratio", "value": rho(i, cfg)[k - 1], "direction": "",
                                 "params": json.dumps({"segment": k, "t_start": TIMES[k - 1], "t_end": TIMES[k]}),
                                 "n": 4, "seconds": 0.1})
                rows.append({"tokenizer": tok, "backbone": bb, "cfg_scale": cfg, "model": "trained", "metric": "fd",
                             "value": 30.0, "direction": "lower", "params": "{}", "n": 100, "seconds": 1.0})
        rows.append({"tokenizer": tok, "backbone": "sit", "cfg_scale": 1.0, "model": "untrained",
                     "metric": "length_ratio", "value": 99.0, "direction": "",
                     "params": json.dumps({"segment": 1, "t_start": 0.0, "t_end": 0.04}), "n": 4, "seconds": 0.1})
    return pd.DataFrame(rows)


def metrics_table(with_viv=("kl",)):
    rows = [{"tokenizer": tok, "metric": "viv_uniform", "value": 1.0, "direction": "lower", "params": "{}",
             "n": 10, "seconds": 0.1} for tok in ("kl", "mcos")]
    for tok in with_viv:
        for t in (0.8, 0.0, 0.4):  # unsorted on purpose
            rows.append({"tokenizer": tok, "metric": "viv_curve", "value": 2.0 - t, "direction": "lower",
                         "params": json.dumps({"t": t}), "n": 10, "seconds": 0.1})
    return pd.DataFrame(rows)


def test_series_parse_params_sort_and_drop_untrained():
    ratios = figures.length_ratio_series(generation_table())
    assert len(ratios) == 2 * 2 * 2 * K  # the untrained row is not a trajectory of a trained model
    one = ratios[(ratios.tokenizer == "mcos") & (ratios.backbone == "ldit") & (ratios.cfg_scale == 2.5)]
    assert one["segment"].tolist() == list(range(1, K + 1))
    assert np.allclose(one["t_start"], TIMES[:-1]) and np.allclose(one["t_end"], TIMES[1:])
    assert np.allclose(one["value"], rho(1, 2.5))
    viv = figures.viv_curve_series(metrics_table())
    assert viv["t"].tolist() == [0.0, 0.4, 0.8] and np.allclose(viv["value"], [2.0, 1.6, 1.2])


def test_figure_draws_rho_at_segment_starts_and_overlays_viv_only_where_it_exists():
    import matplotlib.pyplot as plt

    ratios = figures.length_ratio_series(generation_table())
    viv = figures.viv_curve_series(metrics_table(with_viv=("kl",)))
    for tok, expect_overlay in (("kl", True), ("mcos", False)):
        fig = figures.length_ratio_figure(tok, ratios[ratios.tokenizer == tok], viv[viv.tokenizer == tok])
        panels = [ax for ax in fig.axes if ax.get_ylabel() == "length ratio ρ_k"]
        twins = [ax for ax in fig.axes if ax.get_ylabel() == "VIV(t) of the latents"]
        assert len(panels) == 2 and len(twins) == (2 if expect_overlay else 0)
        index = ["kl", "mcos"].index(tok)
        for ax in panels:
            lines = [line for line in ax.get_lines() if line.get_label().startswith("ρ_k")]
            assert [line.get_label() for line in lines] == ["ρ_k, cfg 1", "ρ_k, cfg 2.5"]
            for line, cfg in zip(lines, (1.0, 2.5)):
                assert np.allclose(line.get_xdata(), TIMES[:-1])
                assert np.allclose(line.get_ydata(), rho(index, cfg))
        for twin in twins:
            (line,) = twin.get_lines()
            assert np.allclose(line.get_xdata(), [0.0, 0.4, 0.8]) and np.allclose(line.get_ydata(), [2.0, 1.6, 1.2])
        # the legend sits below each panel, off the ρ_k and VIV(t) curves
        fig.canvas.draw()
        for ax in panels:
            legend = ax.get_legend().get_window_extent()
            assert legend.y1 <= ax.get_window_extent().y0
        plt.close(fig)


def test_figures_command_writes_the_length_ratio_pngs(tmp_path):
    tables = tmp_path / "tables"
    generation = generation_table()
    write_parquet(generation, tables / "generation.parquet")
    write_parquet(metrics_table(), tables / "metrics.parquet")
    write_parquet(pd.DataFrame({"tokenizer": ["kl", "mcos"], "family": ["f", "f"]}), tables / "tokenizers.parquet")
    write_parquet(pd.DataFrame([{"tokenizer": tok, "metric": m, "value": v, "direction": "lower", "params": "{}",
                                 "n": 10, "seconds": 0.1} for tok in ("kl", "mcos")
                                for m, v in (("rfd", 3.0), ("rfd_untrained", 300.0))]),
                  tables / "reconstruction.parquet")
    write_parquet(pd.DataFrame(columns=["proxy", "family", "backbone", "cfg_scale", "method", "r", "ci95_low",
                                        "ci95_high", "p_val"]), tables / "correlations.parquet")
    parser = argparse.ArgumentParser()
    analysis_commands.register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "figures"
    args = parser.parse_args(["figures", "--tables", str(tables), "--out-dir", str(out)])
    args.func(args)
    for tok in ("kl", "mcos"):
        path = out / f"length_ratio_{tok}.png"
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("frame", [pd.DataFrame(columns=["tokenizer", "backbone", "cfg_scale", "model", "metric",
                                                         "value", "direction", "params", "n", "seconds"])])
def test_no_trajectory_rows_no_figure(tmp_path, frame):
    assert figures.length_ratio_figures(frame, metrics_table(()), tmp_path) == []


def test_cluster_trend_is_the_least_squares_line_and_pearson_r():
    from scipy.stats import pearsonr

    from diffusability.analysis.figures import cluster_trend

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=7), rng.normal(size=7)
    slope, intercept, r = cluster_trend(x, y)
    np.testing.assert_allclose([slope, intercept], np.polyfit(x, y, 1), rtol=1e-12)
    assert r == pytest.approx(pearsonr(x, y).statistic, rel=1e-12)
    assert cluster_trend(x[:2], y[:2]) is None  # two points always fit: no trend is claimed
