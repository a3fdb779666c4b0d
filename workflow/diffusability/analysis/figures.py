"""Figures of the study (matplotlib, PNG): where people would rather look than read.

- ``scatter_<proxy>.png``: each proxy (x) against the generation target (y), one point per
  tokenizer (labelled), one panel per (backbone, guidance scale), Pearson r [CI] and p in titles;
- ``correlation_heatmap.png``: Pearson r of every proxy per (backbone, guidance scale);
- ``trained_vs_untrained.png``: reconstruction and generation FD of trained models next to
  their untrained selves — the check that the correlations are computed on signal.
"""

from __future__ import annotations

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
