"""Figures of the study (matplotlib, PNG): where people would rather look than read.

- ``scatter_<proxy>.png``: each proxy (x) against the generation target (y), one point per
  tokenizer (labelled), one panel per (backbone, guidance scale), Pearson r [CI] and p in titles;
- ``correlation_heatmap.png``: Pearson r of every proxy per (backbone, guidance scale);
- ``trained_vs_untrained.png``: reconstruction and generation FD of trained models next to
  their untrained selves — the check that the correlations are computed on signal;
- ``length_ratio_<tokenizer>.png``: the per-segment length ratio ρ_k of the recorded sampling
  trajectories (docs/metrics.md §10, the study's Fig. 10), one panel per backbone and one line per guidance
  scale, with the tokenizer's VIV(t) curve on a second y-axis when the metrics table has
  ``viv_curve`` rows (params {"t": …}). Figures never recompute metrics: no rows, no curve.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text)


def scatter_figures(proxies: pd.DataFrame, generation: pd.DataFrame, correlations: pd.DataFrame,
                    target: str, out_dir: Path) -> list[Path]:
    """One scatter figure per proxy; returns the written paths."""
    plt = _pyplot()
    trained = generation[(generation["model"] == "trained") & (generation["metric"] == target)]
    panels = sorted(trained.groupby(["backbone", "cfg_scale"]).groups)
    written = []
    for proxy in proxies.columns:
        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.3), squeeze=False)
        for ax, (backbone, cfg_scale) in zip(axes[0], panels):
            y = trained[(trained["backbone"] == backbone) & (trained["cfg_scale"] == cfg_scale)]
            y = y.set_index("tokenizer")["value"]
            x = proxies[proxy].reindex(y.index)
            ax.scatter(x, y, s=28, color="tab:blue", zorder=3)
            for name in y.index:
                ax.annotate(name, (x[name], y[name]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            match = correlations[(correlations["proxy"] == proxy) & (correlations["backbone"] == backbone)
                                 & (correlations["cfg_scale"] == cfg_scale) & (correlations["method"] == "pearson")]
            title = f"{backbone}, cfg {cfg_scale:g}"
            if len(match):
                row = match.iloc[0]
                title += f"\nr = {row.r:.2f} [{row.ci95_low:.2f}, {row.ci95_high:.2f}], p = {row.p_val:.2g}"
            ax.set_title(title, fontsize=8)
            ax.set_xlabel(proxy, fontsize=8)
            ax.set_ylabel(f"generation {target}", fontsize=8)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"scatter_{safe_name(proxy)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def correlation_heatmap(correlations: pd.DataFrame, out_dir: Path) -> Path | None:
    plt = _pyplot()
    pearson = correlations[correlations["method"] == "pearson"]
    if pearson.empty:
        return None
    pearson = pearson.assign(group=pearson["family"] + " · " + pearson["backbone"] + " · cfg "
                             + pearson["cfg_scale"].map(lambda v: f"{v:g}"))
    grid = pearson.pivot_table(index="proxy", columns="group", values="r", aggfunc="first")
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * grid.shape[1], 0.8 + 0.32 * grid.shape[0]))
    image = ax.imshow(grid.to_numpy(float), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=7)
    for (i, j), value in np.ndenumerate(grid.to_numpy(float)):
        if np.isfinite(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=ax, label="Pearson r with generation FD")
    fig.tight_layout()
    path = out_dir / "correlation_heatmap.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def trained_vs_untrained(reconstruction: pd.DataFrame, generation: pd.DataFrame, target: str,
                         out_dir: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    rec = reconstruction.pivot_table(index="tokenizer", columns="metric", values="value", aggfunc="first")
    names = list(rec.index)
    positions = np.arange(len(names))
    if {"rfd", "rfd_untrained"} <= set(rec.columns):
        axes[0].bar(positions - 0.2, rec["rfd_untrained"], 0.4, label="untrained", color="0.7")
        axes[0].bar(positions + 0.2, rec["rfd"], 0.4, label="trained", color="tab:blue")
    axes[0].set_title("Reconstruction FD (lower is better)", fontsize=9)
    gen = generation[(generation["metric"] == target)]
    untrained = gen[gen["model"] == "untrained"].groupby("tokenizer")["value"].mean()
    trained = gen[(gen["model"] == "trained") & (gen["cfg_scale"] == 1.0)].groupby("tokenizer")["value"].mean()
    if len(trained) == 0:
        trained = gen[gen["model"] == "trained"].groupby("tokenizer")["value"].min()
    axes[1].bar(positions - 0.2, untrained.reindex(names), 0.4, label="untrained", color="0.7")
    axes[1].bar(positions + 0.2, trained.reindex(names), 0.4, label="trained", color="tab:orange")
    axes[1].set_title(f"Generation {target} at cfg 1 (lower is better)", fontsize=9)
    for ax in axes:
        ax.set_xticks(positions, names, rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = out_dir / "trained_vs_untrained.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def length_ratio_series(generation: pd.DataFrame) -> pd.DataFrame:
    """ρ_k rows of trained models: tokenizer, backbone, cfg_scale, segment, t_start, t_end, value (sorted)."""
    rows = generation[(generation["metric"] == "length_ratio")]
    if "model" in rows.columns:
        rows = rows[rows["model"] == "trained"]
    params = [json.loads(p) for p in rows["params"]]
    out = pd.DataFrame({
        "tokenizer": rows["tokenizer"].to_numpy(), "backbone": rows["backbone"].to_numpy(),
        "cfg_scale": rows["cfg_scale"].to_numpy(float),
        "segment": [int(p["segment"]) for p in params], "t_start": [float(p["t_start"]) for p in params],
        "t_end": [float(p["t_end"]) for p in params], "value": rows["value"].to_numpy(float)})
    return out.sort_values(["tokenizer", "backbone", "cfg_scale", "segment"], ignore_index=True)


def viv_curve_series(metrics: pd.DataFrame) -> pd.DataFrame:
    """VIV(t) rows (metric ``viv_curve``, params {"t": …}): tokenizer, t, value, sorted by t."""
    rows = metrics[metrics["metric"] == "viv_curve"]
    times = [float(json.loads(p)["t"]) for p in rows["params"]]
    out = pd.DataFrame({"tokenizer": rows["tokenizer"].to_numpy(), "t": times, "value": rows["value"].to_numpy(float)})
    return out.sort_values(["tokenizer", "t"], ignore_index=True)


def length_ratio_figure(tokenizer: str, ratios: pd.DataFrame, viv: pd.DataFrame):
    """The ρ_k figure of one tokenizer (a matplotlib Figure, not saved).

    ``ratios``: this tokenizer's rows of :func:`length_ratio_series`; ``viv``: its rows of
    :func:`viv_curve_series` (may be empty). ρ_k is drawn at the segment start t_{k−1}, where
    docs/metrics.md §10 evaluates the VIV overlay; the dotted line ρ = 1 is the straight constant-speed path.
    """
    plt = _pyplot()
    backbones = sorted(ratios["backbone"].unique())
    fig, axes = plt.subplots(1, len(backbones), figsize=(4.2 * len(backbones), 3.3), squeeze=False)
    for ax, backbone in zip(axes[0], backbones):
        panel = ratios[ratios["backbone"] == backbone]
        for cfg_scale, line in panel.groupby("cfg_scale"):
            ax.plot(line["t_start"], line["value"], marker=".", markersize=3, linewidth=1.2,
                    label=f"ρ_k, cfg {cfg_scale:g}")
        ax.axhline(1.0, color="0.5", linestyle=":", linewidth=0.8)
        ax.set_xlabel("t (0 = noise, 1 = data), segment start", fontsize=8)
        ax.set_ylabel("length ratio ρ_k", fontsize=8)
        ax.set_title(f"{tokenizer} · {backbone}", fontsize=9)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if len(viv):
            twin = ax.twinx()
            twin.plot(viv["t"], viv["value"], color="black", linestyle="--", linewidth=1.0, label="VIV(t)")
            twin.set_ylabel("VIV(t) of the latents", fontsize=8)
            more_handles, more_labels = twin.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        ax.legend(handles, labels, fontsize=7)
    fig.tight_layout()
    return fig


def length_ratio_figures(generation: pd.DataFrame, metrics: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``length_ratio_<tokenizer>.png`` for every tokenizer with ρ_k rows; returns the written paths."""
    plt = _pyplot()
    ratios = length_ratio_series(generation)
    viv = viv_curve_series(metrics)
    written = []
    for tokenizer, rows in ratios.groupby("tokenizer"):
        fig = length_ratio_figure(tokenizer, rows, viv[viv["tokenizer"] == tokenizer])
        path = Path(out_dir) / f"length_ratio_{safe_name(tokenizer)}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
