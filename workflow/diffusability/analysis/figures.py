"""Figures of the study (matplotlib, PNG), one per figure of the paper where the data exist.

Every figure is listed with its caption in :data:`CAPTIONS` (file-name prefix → caption): the Snakemake
report (workflow/report/figures.rst) and the Markdown summary show them. Colour is the tokenizer's
cluster everywhere (``predict.tokenizer_cluster``: the tokenizers table's ``cluster`` where set, else the
regularizer); a tokenizer's target is the mean over its seeds where there are repeats. ``✓``/``✗`` after an r
says whether its sign is the one the proxy's "better" direction predicts (nothing for diagnostics).
The *reference group* of the single-group figures is the study's Fig. 4 setting: all families together
(or the only one), the first backbone, guidance scale 1 (else the smallest sampled). Figures never recompute
metrics: no rows, no figure.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("diffusability.analysis")

#: file-name prefix → caption (the longest matching prefix applies; docs/analysis.md lists the figures)
CAPTIONS = {
    "scatter_": "One proxy (x) against the generation target (y), one point per tokenizer coloured by its cluster, "
                "one panel per backbone and guidance scale; titles give Pearson r with its Fisher-z 95 % interval, "
                "the bootstrap 95 % interval over tokenizers (and seeds) and whether the sign of r is the one the "
                "proxy's better direction predicts.",
    "correlation_heatmap": "Pearson r of every proxy (rows) with the generation target named in the colour-bar "
                           "label, per family, backbone and guidance scale (columns); a cross marks an r whose sign "
                           "contradicts the proxy's better direction.",
    "fig4_perspectives_": "The study's Fig. 4: every proxy against the target in the reference group, one row per "
                          "perspective ranked by its best |r| (the study's seven first, then the other groups), the "
                          "perspective's main proxy framed; colour = cluster.",
    "fig4_intervals": "Every proxy's r in the reference group with its Fisher-z 95 % interval (thick) and the bootstrap "
                      "95 % interval over tokenizers and seeds (thin), per target (columns) and method (rows), grouped "
                      "by perspective; green = sign as the proxy's direction predicts, red = the opposite, grey = "
                      "no direction.",
    "fig5_backbones_": "The study's Fig. 5: the main proxy of each perspective (columns, from the reference group) "
                       "against the target for every backbone (rows), all families, guidance scale 1 (else the "
                       "smallest sampled); colour = cluster.",
    "fig6_families_": "The study's Fig. 6: the main proxies against the target for every tokenizer family (rows) on "
                      "the first backbone; colour = cluster.",
    "fig7_guidance_": "The study's Fig. 7: the main proxies against the target at every sampled guidance scale inside "
                      "the analysis range (small points, one column per tokenizer) with each tokenizer's optimum in "
                      "that range highlighted; titles give r at the per-tokenizer optimum.",
    "fig8_pairs": "The study's Fig. 8: every pair of perspectives' main proxies in the reference group, bubble size = "
                  "the target, colour = cluster; titles give the R² (adjusted R²) of the two-proxy OLS fit and the "
                  "r between the two proxies (collinearity).",
    "fig9_transport_": "The study's Fig. 9: local straightness and global efficiency of the sampling trajectories "
                       "against the target, per backbone and guidance scale; colour = cluster.",
    "fig25_guidance_curves_": "The study's Fig. 25: the target against the guidance scale, one line per tokenizer "
                              "(colour = cluster), the analysis range shaded, each tokenizer's optimum in the range "
                              "marked with a star.",
    "length_ratio_": "The study's Fig. 10: the per-segment length ratio of the recorded sampling trajectories (1 = "
                     "the straight constant-speed path) per guidance scale, with the tokenizer's VIV(t) on the right "
                     "axis where the metrics table has it.",
    "trained_vs_untrained": "Reconstruction and generation Fréchet distances of the trained models next to their "
                            "untrained selves: the check that the correlations are computed on signal.",
    "seed_noise_": "Each tokenizer's target over its seed repeats (mean ± SD) per backbone and guidance scale; the "
                   "title gives the ratio of the spread between tokenizers to the seed noise.",
}


def caption(name: str) -> str:
    """The caption of a figure file (name without .png): the longest matching prefix of :data:`CAPTIONS`."""
    matches = [prefix for prefix in CAPTIONS if name.startswith(prefix)]
    return CAPTIONS[max(matches, key=len)] if matches else ""


def caption_list() -> list[tuple[str, str]]:
    """(prefix, caption), longest prefix first: what the report template matches a file name against.

    The captions are escaped for reStructuredText, the report's markup (:func:`rst_escape`).
    """
    return sorted(((prefix, rst_escape(text)) for prefix, text in CAPTIONS.items()), key=lambda item: -len(item[0]))


def rst_escape(text: str) -> str:
    r"""``text`` with reStructuredText's inline markup characters backslash-escaped.

    Unescaped, ``|r|`` is a substitution reference (docutils: "Undefined substitution referenced"),
    ``*x*`` emphasis and ``x_`` a hyperlink reference.

    >>> rst_escape("best |r| *and* x_1")
    'best \\|r\\| \\*and\\* x\\_1'
    """
    return re.sub(r"([\\|*`_])", r"\\\1", text)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text)


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # tight: colour-bar labels and outside legends stay in
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- shared pieces


def cluster_colours(clusters: pd.Series) -> dict[str, tuple]:
    """cluster → colour (tab10, then tab20), in sorted order of the cluster names."""
    plt = _pyplot()
    names = sorted(set(clusters.astype(str)))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _clusters_of(clusters: pd.Series | None, names) -> pd.Series:
    names = list(names)
    if clusters is None:
        return pd.Series("all", index=names)
    return clusters.reindex(names).fillna("?").astype(str)


def _legend(fig, colours: dict) -> None:
    plt = _pyplot()
    handles = [plt.Line2D([], [], color=c, marker="o", linestyle="", label=name) for name, c in colours.items()]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, title="cluster",
               title_fontsize=7, frameon=False)


def sign_mark(sign_ok) -> str:
    """``✓`` (sign as the direction predicts), ``✗`` (the opposite) or "" (no direction)."""
    if sign_ok is None or pd.isna(sign_ok):
        return ""
    return " ✓" if bool(sign_ok) else " ✗"


def r_text(row) -> str:
    """``r = 0.87 [0.52, 0.97] boot [0.61, 0.98] ✓`` of a correlation row."""
    text = f"r = {row.r:.2f} [{row.ci95_low:.2f}, {row.ci95_high:.2f}]"
    if np.isfinite(getattr(row, "boot_low", np.nan)):
        text += f" boot [{row.boot_low:.2f}, {row.boot_high:.2f}]"
    return text + sign_mark(getattr(row, "sign_ok", None))


def _short(proxy: str) -> str:
    return proxy.split("/", 1)[1] if "/" in proxy else proxy


def target_means(generation: pd.DataFrame, target: str) -> pd.DataFrame:
    """tokenizer, backbone, cfg_scale, value: the trained models' ``target`` (mean over seeds)."""
    from .correlations import target_values

    values = target_values(generation, target)
    return values.groupby(["tokenizer", "backbone", "cfg_scale"], as_index=False)["value"].mean()


def _y(means: pd.DataFrame, backbone: str, cfg_scale: float) -> pd.Series:
    rows = means[(means["backbone"] == backbone) & np.isclose(means["cfg_scale"], cfg_scale)]
    return rows.set_index("tokenizer")["value"]


#: a cluster gets its own trend line from this many tokenizers on (a graded family: one regularizer swept)
TREND_MIN_POINTS = 3


def cluster_trend(x, y) -> tuple[float, float, float] | None:
    """(slope, intercept, Pearson r) of the least-squares line y ≈ a·x + b, or None for < 3 points or constant x.

    The within-cluster trend the study remarks on (e.g. gFID improving as one regularizer's weight grows):
    drawn in every scatter for each cluster with :data:`TREND_MIN_POINTS` or more tokenizers.

    Examples
    --------
    >>> cluster_trend([0.0, 1.0, 2.0], [1.0, 3.0, 5.0])
    (2.0, 1.0, 1.0)
    >>> cluster_trend([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]) is None
    True
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < TREND_MIN_POINTS or np.ptp(x) == 0:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    slope = float(dx @ dy / (dx @ dx))
    r = float(dx @ dy / np.sqrt((dx @ dx) * (dy @ dy))) if dy @ dy > 0 else 0.0
    return slope, float(y.mean() - slope * x.mean()), r


def _scatter(ax, x: pd.Series, y: pd.Series, clusters: pd.Series, colours: dict, sizes=None,
             label: bool = True) -> None:
    """One point per tokenizer present in both, coloured by cluster, labelled when there are few; a dashed
    least-squares line per cluster of at least :data:`TREND_MIN_POINTS` tokenizers (:func:`cluster_trend`)."""
    x = x.reindex(y.index)
    keep = np.isfinite(x.to_numpy(float)) & np.isfinite(y.to_numpy(float))
    x, y = x[keep], y[keep]
    groups = _clusters_of(clusters, y.index)
    for group in sorted(set(groups)):
        members = (groups == group).to_numpy()
        size = 28 if sizes is None else sizes.reindex(y.index)[members].to_numpy(float)
        ax.scatter(x[members], y[members], s=size, color=colours.get(group, "0.5"), alpha=0.85,
                   edgecolor="white", linewidth=0.4, zorder=3)
        trend = cluster_trend(x[members], y[members])
        if trend is not None:
            slope, intercept, _ = trend
            ends = np.array([x[members].min(), x[members].max()])
            ax.plot(ends, slope * ends + intercept, linestyle="--", linewidth=1.0,
                    color=colours.get(group, "0.5"), alpha=0.8, zorder=2)
    if label and len(y) <= 25:
        for name in y.index:
            ax.annotate(name, (x[name], y[name]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)


def panel_grid(means: pd.DataFrame, width: float, height: float):
    """(figure, {(backbone, cfg_scale): axes}): one row per backbone, one column per guidance scale."""
    plt = _pyplot()
    backbones = sorted(means["backbone"].unique())
    scales = sorted(means["cfg_scale"].unique())
    fig, axes = plt.subplots(len(backbones), len(scales), figsize=(width * len(scales), height * len(backbones)),
                             squeeze=False)
    present = set(zip(means["backbone"], means["cfg_scale"]))
    grid = {}
    for i, backbone in enumerate(backbones):
        for j, scale in enumerate(scales):
            if (backbone, scale) in present:
                grid[backbone, scale] = axes[i, j]
            else:
                axes[i, j].axis("off")
    return fig, grid


def _row(correlations: pd.DataFrame, target: str, proxy: str, family: str, backbone: str, cfg_scale: float,
         method: str = "pearson"):
    if correlations.empty or "target" not in correlations.columns:
        return None
    match = correlations[(correlations["target"] == target) & (correlations["proxy"] == proxy)
                         & (correlations["family"] == family) & (correlations["backbone"] == backbone)
                         & np.isclose(correlations["cfg_scale"], cfg_scale) & (correlations["method"] == method)]
    return match.iloc[0] if len(match) else None


def reference_group(correlations: pd.DataFrame, target: str) -> tuple[str, str, float] | None:
    """(family, backbone, cfg_scale) of the single-group figures (see the module docstring); None without rows."""
    from .correlations import ALL_FAMILIES

    if correlations.empty or not {"target", "method", "family", "backbone", "cfg_scale"} <= set(correlations.columns):
        return None
    rows = correlations[(correlations["target"] == target) & (correlations["method"] == "pearson")]
    if rows.empty:
        return None
    families = set(rows["family"])
    family = ALL_FAMILIES if ALL_FAMILIES in families else sorted(families)[0]
    rows = rows[rows["family"] == family]
    backbone = sorted(rows["backbone"].unique())[0]
    scales = sorted(rows.loc[rows["backbone"] == backbone, "cfg_scale"].unique())
    scale = 1.0 if any(np.isclose(scales, 1.0)) else float(scales[0])
    return family, backbone, scale


def _family_tokenizers(tokenizers: pd.DataFrame | None, family: str) -> set | None:
    from .correlations import ALL_FAMILIES

    if tokenizers is None or family == ALL_FAMILIES:
        return None
    return set(tokenizers.loc[tokenizers["family"] == family, "tokenizer"])


def _restrict(y: pd.Series, members: set | None) -> pd.Series:
    return y if members is None else y[y.index.isin(members)]


# --------------------------------------------------------------------------- per proxy


def scatter_figures(proxies: pd.DataFrame, generation: pd.DataFrame, correlations: pd.DataFrame,
                    target: str, out_dir: Path, clusters: pd.Series | None = None) -> list[Path]:
    """One scatter figure per proxy (``scatter_<proxy>.png``); returns the written paths."""
    from .correlations import ALL_FAMILIES

    means = target_means(generation, target)
    colours = cluster_colours(_clusters_of(clusters, proxies.index))
    family = ALL_FAMILIES if ALL_FAMILIES in set(correlations.get("family", [])) else None
    written = []
    for proxy in proxies.columns:
        fig, grid = panel_grid(means, 3.6, 3.3)
        for (backbone, cfg_scale), ax in grid.items():
            y = _y(means, backbone, cfg_scale)
            _scatter(ax, proxies[proxy], y, clusters, colours)
            rows = correlations[(correlations["proxy"] == proxy) & (correlations["backbone"] == backbone)
                                & np.isclose(correlations["cfg_scale"], cfg_scale)
                                & (correlations["method"] == "pearson")]
            if "target" in rows.columns:
                rows = rows[rows["target"] == target]
            if family is not None:
                rows = rows[rows["family"] == family]
            title = f"{backbone}, cfg {cfg_scale:g}"
            if len(rows):
                title += "\n" + r_text(rows.iloc[0])
            ax.set_title(title, fontsize=7)
            ax.set_xlabel(proxy, fontsize=8)
            ax.set_ylabel(f"generation {target}", fontsize=8)
        _legend(fig, colours)
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"scatter_{safe_name(proxy)}.png"))
    return written


def correlation_heatmap(correlations: pd.DataFrame, out_dir: Path, target: str | None = None,
                        name: str = "correlation_heatmap") -> Path | None:
    """Pearson r of every proxy per (family, backbone, guidance scale) for one target (default: the first)."""
    plt = _pyplot()
    pearson = correlations[correlations["method"] == "pearson"]
    if "target" in pearson.columns and len(pearson):
        target = target or pearson["target"].iloc[0]
        pearson = pearson[pearson["target"] == target]
    if pearson.empty:
        return None
    pearson = pearson.assign(group=pearson["family"] + " · " + pearson["backbone"] + " · cfg "
                             + pearson["cfg_scale"].map(lambda v: f"{v:g}"))
    grid = pearson.pivot_table(index="proxy", columns="group", values="r", aggfunc="first")
    wrong = None
    if "sign_ok" in pearson.columns:
        flags = pearson.assign(wrong=pearson["sign_ok"].astype("boolean").eq(False).fillna(False).astype(float))
        wrong = flags.pivot_table(index="proxy", columns="group", values="wrong", aggfunc="first")
        wrong = wrong.reindex(index=grid.index, columns=grid.columns).fillna(0).to_numpy(bool)
    fig, ax = plt.subplots(figsize=(2.4 + 1.3 * grid.shape[1], 0.9 + 0.32 * grid.shape[0]))
    image = ax.imshow(grid.to_numpy(float), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=7)
    for (i, j), value in np.ndenumerate(grid.to_numpy(float)):
        if np.isfinite(value):
            mark = " ✗" if wrong is not None and wrong[i, j] else ""
            ax.text(j, i, f"{value:.2f}{mark}", ha="center", va="center", fontsize=6,
                    color="white" if abs(value) > 0.6 else "black")
    bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label(f"Pearson r with generation {target}", fontsize=8)
    fig.tight_layout()
    return _save(fig, out_dir / f"{name}.png")


# --------------------------------------------------------------------------- perspectives (Figs. 4–6)


def perspectives_figure(proxies: pd.DataFrame, generation: pd.DataFrame, perspectives: pd.DataFrame,
                        tokenizers: pd.DataFrame | None, clusters: pd.Series | None, target: str,
                        out_dir: Path) -> Path | None:
    """Fig. 4: every proxy against ``target`` in the reference group, one row per perspective in rank order."""
    plt = _pyplot()
    rows = perspectives[(perspectives["target"] == target) & (perspectives["method"] == "pearson")]
    group = reference_group(rows, target) if len(rows) else None
    if group is None:
        return None
    family, backbone, cfg_scale = group
    rows = rows[(rows["family"] == family) & (rows["backbone"] == backbone) & np.isclose(rows["cfg_scale"], cfg_scale)]
    rows = rows.assign(order=np.where(rows["paper"], 0, 1)).sort_values(["order", "rank", "best"],
                                                                       ascending=[True, True, False])
    order = list(dict.fromkeys(rows["perspective"]))
    width = max(int(rows.groupby("perspective").size().max()), 1)
    y = _restrict(_y(target_means(generation, target), backbone, cfg_scale), _family_tokenizers(tokenizers, family))
    colours = cluster_colours(_clusters_of(clusters, y.index))
    fig, axes = plt.subplots(len(order), width, figsize=(2.7 * width, 2.45 * len(order)), squeeze=False)
    for i, perspective in enumerate(order):
        members = rows[rows["perspective"] == perspective]
        for j in range(width):
            ax = axes[i, j]
            if j >= len(members):
                ax.axis("off")
                continue
            row = members.iloc[j]
            if row.proxy in proxies.columns:
                _scatter(ax, proxies[row.proxy], y, clusters, colours, label=False)
            ax.set_title(f"{_short(row.proxy)}\n{r_text(row)}", fontsize=6.5)
            if bool(row.best):
                for spine in ax.spines.values():
                    spine.set_linewidth(2.2)
                    spine.set_edgecolor("black")
            if j == 0:
                rank = f"#{int(row['rank'])} " if bool(row.paper) else ""
                ax.set_ylabel(f"{rank}{perspective}\n{target}", fontsize=7)
    _legend(fig, colours)
    fig.suptitle(f"Perspectives: every proxy against {target} ({family}, {backbone}, cfg {cfg_scale:g}; "
                 f"framed = main proxy)", fontsize=9, y=1.0, va="bottom")
    fig.tight_layout()
    return _save(fig, out_dir / f"fig4_perspectives_{safe_name(target)}.png")


def intervals_figure(correlations: pd.DataFrame, target: str, out_dir: Path) -> Path | None:
    """Every proxy's r with both intervals in the reference group: columns = targets, rows = methods."""
    plt = _pyplot()
    group = reference_group(correlations, target)
    if group is None:
        return None
    family, backbone, cfg_scale = group
    rows = correlations[(correlations["family"] == family) & (correlations["backbone"] == backbone)
                        & np.isclose(correlations["cfg_scale"], cfg_scale)]
    targets = list(dict.fromkeys([target] + sorted(set(rows["target"]) - {target})))
    methods = [m for m in ("pearson", "spearman") if m in set(rows["method"])]
    reference = rows[(rows["target"] == target) & (rows["method"] == "pearson")]
    from .perspectives import PAPER_PERSPECTIVES

    rank = {p: i for i, p in enumerate(PAPER_PERSPECTIVES)}
    proxies = reference.assign(order=reference["perspective"].map(lambda p: rank.get(p, len(rank))))
    proxies = proxies.sort_values(["order", "perspective", "proxy"])
    perspective = proxies["perspective"].tolist()
    starts = [k for k in range(len(perspective)) if k == 0 or perspective[k] != perspective[k - 1]]
    names = [perspective[k] for k in starts]
    proxies = proxies["proxy"].tolist()
    height = 0.9 + 0.22 * len(proxies)
    fig, axes = plt.subplots(len(methods), len(targets), figsize=(3.4 * len(targets), height * len(methods)),
                             squeeze=False, sharey=True)
    colour = {True: "tab:green", False: "tab:red"}
    for i, method in enumerate(methods):
        for j, goal in enumerate(targets):
            ax = axes[i, j]
            panel = rows[(rows["target"] == goal) & (rows["method"] == method)].set_index("proxy")
            for k, proxy in enumerate(proxies):
                if proxy not in panel.index:
                    continue
                row = panel.loc[proxy]
                c = "0.5" if pd.isna(row.sign_ok) else colour[bool(row.sign_ok)]
                ax.plot([row.ci95_low, row.ci95_high], [k, k], color=c, linewidth=3.2, alpha=0.55)
                if np.isfinite(row.boot_low):
                    ax.plot([row.boot_low, row.boot_high], [k + 0.25, k + 0.25], color=c, linewidth=1.0)
                ax.plot(row.r, k, "o", color=c, markersize=4)
            ax.axvline(0.0, color="0.4", linewidth=0.8)
            ax.set_xlim(-1.05, 1.05)
            ax.set_title(f"{method} r with {goal}", fontsize=8)
            ax.grid(alpha=0.3, axis="x")
            ax.tick_params(labelsize=7)
            ax.set_yticks(range(len(proxies)), [_short(p) for p in proxies], fontsize=7)
            for k in starts[1:]:
                ax.axhline(k - 0.5, color="0.6", linewidth=0.6, linestyle=":")
        for k, name in zip(starts, names):
            axes[i, -1].text(1.02, k - 0.3, name, transform=axes[i, -1].get_yaxis_transform(), fontsize=7,
                             va="top", color="0.25")
    axes[0, 0].invert_yaxis()  # shared y: the first proxy on top in every panel
    fig.suptitle(f"r with Fisher-z (thick) and bootstrap (thin) 95 % intervals — {family}, {backbone}, "
                 f"cfg {cfg_scale:g}", fontsize=9, y=1.0, va="bottom")
    fig.tight_layout()
    return _save(fig, out_dir / "fig4_intervals.png")


def _main_columns(perspectives: pd.DataFrame, correlations: pd.DataFrame, target: str) -> list[tuple[str, str]]:
    from .perspectives import main_proxies

    group = reference_group(correlations, target)
    return [] if group is None else main_proxies(perspectives, target, *group)


def proxy_grid(proxies: pd.DataFrame, generation: pd.DataFrame, correlations: pd.DataFrame, columns,
               panels, clusters: pd.Series | None, target: str, tokenizers: pd.DataFrame | None, title: str):
    """A grid: one row per (label, family, backbone, cfg_scale) panel row, one column per (perspective, proxy)."""
    plt = _pyplot()
    means = target_means(generation, target)
    colours = cluster_colours(_clusters_of(clusters, proxies.index))
    fig, axes = plt.subplots(len(panels), len(columns), figsize=(2.7 * len(columns), 2.45 * len(panels)),
                             squeeze=False)
    for i, (label, family, backbone, cfg_scale) in enumerate(panels):
        y = _restrict(_y(means, backbone, cfg_scale), _family_tokenizers(tokenizers, family))
        for j, (perspective, proxy) in enumerate(columns):
            ax = axes[i, j]
            _scatter(ax, proxies[proxy], y, clusters, colours, label=False)
            row = _row(correlations, target, proxy, family, backbone, cfg_scale)
            ax.set_title(f"{_short(proxy)}\n" + (r_text(row) if row is not None else "(no r: too few tokenizers)"),
                         fontsize=6.5)
            if i == 0:
                ax.text(0.5, 1.32, perspective, transform=ax.transAxes, ha="center", fontsize=8, weight="bold")
            if j == 0:
                ax.set_ylabel(f"{label}\n{target}", fontsize=7)
    _legend(fig, colours)
    fig.suptitle(title, fontsize=9, y=1.0, va="bottom")
    fig.tight_layout()
    return fig


def backbones_figure(proxies, generation, correlations, perspectives, clusters, target, out_dir,
                     tokenizers=None) -> Path | None:
    """Fig. 5: the reference group's main proxies against ``target`` on every backbone."""
    columns = [c for c in _main_columns(perspectives, correlations, target) if c[1] in proxies.columns]
    group = reference_group(correlations, target)
    if not columns or group is None:
        return None
    family, _, _ = group
    rows = correlations[(correlations["target"] == target) & (correlations["family"] == family)]
    panels = []
    for backbone in sorted(rows["backbone"].unique()):
        scales = sorted(rows.loc[rows["backbone"] == backbone, "cfg_scale"].unique())
        scale = 1.0 if any(np.isclose(scales, 1.0)) else float(scales[0])
        panels.append((f"{backbone} (cfg {scale:g})", family, backbone, scale))
    fig = proxy_grid(proxies, generation, correlations, columns, panels, clusters, target, tokenizers,
                     f"Main proxies against {target} per backbone ({family})")
    return _save(fig, out_dir / f"fig5_backbones_{safe_name(target)}.png")


def families_figure(proxies, generation, correlations, perspectives, clusters, target, out_dir,
                    tokenizers=None) -> Path | None:
    """Fig. 6: the main proxies against ``target`` per tokenizer family (first backbone); None with one family."""
    from .correlations import ALL_FAMILIES

    columns = [c for c in _main_columns(perspectives, correlations, target) if c[1] in proxies.columns]
    group = reference_group(correlations, target)
    if not columns or group is None:
        return None
    _, backbone, scale = group
    families = sorted(set(correlations["family"]) - {ALL_FAMILIES})
    if len(families) < 2:
        log.info("figures: one tokenizer family, no per-family figure")
        return None
    panels = [(family, family, backbone, scale) for family in families]
    fig = proxy_grid(proxies, generation, correlations, columns, panels, clusters, target, tokenizers,
                     f"Main proxies against {target} per tokenizer family ({backbone}, cfg {scale:g})")
    return _save(fig, out_dir / f"fig6_families_{safe_name(target)}.png")


# --------------------------------------------------------------------------- guidance (Figs. 7, 25)


def guidance_curves(generation: pd.DataFrame, optima: pd.DataFrame, clusters: pd.Series | None, target: str,
                    out_dir: Path) -> Path | None:
    """Fig. 25: ``target`` against the guidance scale per tokenizer, the range shaded, the optimum starred."""
    plt = _pyplot()
    means = target_means(generation, target)
    rows = optima[optima["target"] == target]
    if means.empty or means["cfg_scale"].nunique() < 2:
        return None
    backbones = sorted(means["backbone"].unique())
    colours = cluster_colours(_clusters_of(clusters, means["tokenizer"].unique()))
    groups = _clusters_of(clusters, means["tokenizer"].unique())
    fig, axes = plt.subplots(1, len(backbones), figsize=(4.2 * len(backbones), 3.4), squeeze=False)
    for ax, backbone in zip(axes[0], backbones):
        panel = means[means["backbone"] == backbone]
        for tokenizer, curve in panel.groupby("tokenizer"):
            curve = curve.sort_values("cfg_scale")
            ax.plot(curve["cfg_scale"], curve["value"], marker=".", linewidth=1.0, alpha=0.8,
                    color=colours[groups[tokenizer]])
            best = rows[(rows["backbone"] == backbone) & (rows["tokenizer"] == tokenizer)]
            if len(best):
                ax.plot(best["best_scale"], best["best_value"], "*", markersize=10, color=colours[groups[tokenizer]],
                        markeredgecolor="black", markeredgewidth=0.5, zorder=4)
        if len(rows):
            ax.axvspan(rows["scale_low"].iloc[0], rows["scale_high"].iloc[0], color="0.85", zorder=0)
        inside = rows[rows["backbone"] == backbone]
        share = f"; optimum in range for {int(inside['in_range'].sum())}/{len(inside)}" if len(inside) else ""
        ax.set_title(f"{backbone}{share}", fontsize=8)
        ax.set_xlabel("guidance scale", fontsize=8)
        ax.set_ylabel(f"generation {target}", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    _legend(fig, colours)
    fig.tight_layout()
    return _save(fig, out_dir / f"fig25_guidance_curves_{safe_name(target)}.png")


def guidance_figure(proxies: pd.DataFrame, generation: pd.DataFrame, optima: pd.DataFrame,
                    optimum_correlations: pd.DataFrame, columns, clusters: pd.Series | None, target: str,
                    out_dir: Path) -> Path | None:
    """Fig. 7: the main proxies against ``target`` at every in-range scale, each tokenizer's optimum highlighted."""
    from .correlations import ALL_FAMILIES

    plt = _pyplot()
    rows = optima[optima["target"] == target]
    columns = [c for c in columns if c[1] in proxies.columns]
    if rows.empty or not columns:
        return None
    low, high = float(rows["scale_low"].iloc[0]), float(rows["scale_high"].iloc[0])
    means = target_means(generation, target)
    means = means[(means["cfg_scale"] >= low - 1e-9) & (means["cfg_scale"] <= high + 1e-9)]
    backbones = sorted(rows["backbone"].unique())
    colours = cluster_colours(_clusters_of(clusters, proxies.index))
    fig, axes = plt.subplots(len(backbones), len(columns), figsize=(2.7 * len(columns), 2.5 * len(backbones)),
                             squeeze=False)
    families = set(optimum_correlations["family"]) if len(optimum_correlations) else set()
    family = ALL_FAMILIES if ALL_FAMILIES in families else (sorted(families)[0] if families else None)
    for i, backbone in enumerate(backbones):
        best = rows[rows["backbone"] == backbone].set_index("tokenizer")
        panel = means[means["backbone"] == backbone]
        for j, (perspective, proxy) in enumerate(columns):
            ax = axes[i, j]
            x = proxies[proxy]
            known = panel[panel["tokenizer"].isin(x.index)]
            ax.scatter(known["tokenizer"].map(x), known["value"], s=8, color="0.65", zorder=2)
            _scatter(ax, x, best["best_value"], clusters, colours, label=False)
            match = optimum_correlations[(optimum_correlations["target"] == target)
                                         & (optimum_correlations["backbone"] == backbone)
                                         & (optimum_correlations["proxy"] == proxy)
                                         & (optimum_correlations["method"] == "pearson")
                                         & (optimum_correlations["family"] == family)]
            text = r_text(match.iloc[0]) if len(match) else "(no r: too few tokenizers)"
            ax.set_title(f"{_short(proxy)}\n{text}", fontsize=6.5)
            if i == 0:
                ax.text(0.5, 1.32, perspective, transform=ax.transAxes, ha="center", fontsize=8, weight="bold")
            if j == 0:
                ax.set_ylabel(f"{backbone}\n{target}, cfg {low:g}–{high:g}", fontsize=7)
    _legend(fig, colours)
    fig.suptitle(f"Main proxies against {target} at each tokenizer's best guidance scale in [{low:g}, {high:g}] "
                 "(grey: the other scales in the range)", fontsize=9, y=1.0, va="bottom")
    fig.tight_layout()
    return _save(fig, out_dir / f"fig7_guidance_{safe_name(target)}.png")


# --------------------------------------------------------------------------- pairs (Fig. 8), transport (Fig. 9)


def pairs_figure(proxies: pd.DataFrame, generation: pd.DataFrame, pairs: pd.DataFrame, correlations: pd.DataFrame,
                 clusters: pd.Series | None, target: str, out_dir: Path,
                 tokenizers: pd.DataFrame | None = None) -> Path | None:
    """Fig. 8: bubble plots of every pair of main proxies in the reference group (size = target)."""
    plt = _pyplot()
    group = reference_group(correlations, target)
    if group is None or pairs.empty:
        return None
    family, backbone, cfg_scale = group
    rows = pairs[(pairs["target"] == target) & (pairs["family"] == family) & (pairs["backbone"] == backbone)
                 & np.isclose(pairs["cfg_scale"], cfg_scale)]
    if rows.empty:
        return None
    order = list(dict.fromkeys(list(rows["perspective_1"]) + list(rows["perspective_2"])))
    proxy_of = dict(zip(rows["perspective_1"], rows["proxy_1"])) | dict(zip(rows["perspective_2"], rows["proxy_2"]))
    y = _restrict(_y(target_means(generation, target), backbone, cfg_scale), _family_tokenizers(tokenizers, family))
    span = float(y.max() - y.min()) or 1.0
    sizes = 15 + 200 * (y - y.min()) / span
    colours = cluster_colours(_clusters_of(clusters, y.index))
    k = len(order) - 1
    fig, axes = plt.subplots(k, k, figsize=(2.6 * k, 2.5 * k), squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            first, second = order[j], order[i + 1]
            if j > i:
                ax.axis("off")
                continue
            match = rows[((rows["perspective_1"] == first) & (rows["perspective_2"] == second))
                         | ((rows["perspective_1"] == second) & (rows["perspective_2"] == first))]
            x_proxy, y_proxy = proxy_of[first], proxy_of[second]
            if x_proxy in proxies.columns and y_proxy in proxies.columns:
                names = [n for n in y.index if n in proxies.index]
                for name in names:
                    ax.scatter(proxies.at[name, x_proxy], proxies.at[name, y_proxy], s=sizes[name], alpha=0.7,
                               color=colours.get(_clusters_of(clusters, [name]).iloc[0], "0.5"), edgecolor="black",
                               linewidth=0.3)
            if len(match):
                m = match.iloc[0]
                ax.set_title(f"R² = {m.r2:.2f} (adj {m.adj_r2:.2f}), r₁₂ = {m.r_12:.2f}", fontsize=6.5)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=6)
            if i == k - 1:
                ax.set_xlabel(f"{first}\n{_short(x_proxy)}", fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{second}\n{_short(y_proxy)}", fontsize=7)
    _legend(fig, colours)
    fig.suptitle(f"Pairs of main proxies; bubble size = {target} ({family}, {backbone}, cfg {cfg_scale:g})",
                 fontsize=9, y=1.0, va="bottom")
    fig.tight_layout()
    return _save(fig, out_dir / "fig8_pairs.png")


def transport_figure(generation: pd.DataFrame, correlations: pd.DataFrame, clusters: pd.Series | None,
                     target: str, out_dir: Path, tokenizers: pd.DataFrame | None = None) -> Path | None:
    """Fig. 9: local straightness and global efficiency against ``target`` per backbone and guidance scale."""
    from .correlations import ALL_FAMILIES, TRANSPORT_METRICS, transport_proxies

    plt = _pyplot()
    means = target_means(generation, target)
    present = [m for m in TRANSPORT_METRICS if m in set(generation["metric"])]
    if not present or means.empty:
        return None
    panels = []  # per backbone its reference scale: 1 where sampled, else the smallest
    for backbone in sorted(means["backbone"].unique()):
        scales = sorted(means.loc[means["backbone"] == backbone, "cfg_scale"].unique())
        panels.append((backbone, 1.0 if any(np.isclose(scales, 1.0)) else float(scales[0])))
    colours = cluster_colours(_clusters_of(clusters, means["tokenizer"].unique()))
    families = set(correlations["family"]) if len(correlations) else set()
    family = ALL_FAMILIES if ALL_FAMILIES in families else (sorted(families)[0] if families else "")
    fig, axes = plt.subplots(len(panels), len(present), figsize=(3.4 * len(present), 2.8 * len(panels)),
                             squeeze=False)
    for i, (backbone, cfg_scale) in enumerate(panels):
        x = transport_proxies(generation, backbone, cfg_scale)
        y = _y(means, backbone, cfg_scale)
        for j, metric in enumerate(present):
            ax = axes[i, j]
            proxy = f"trajectory/{metric}"
            if proxy in x.columns:
                _scatter(ax, x[proxy], y, clusters, colours)
            row = _row(correlations, target, proxy, family, backbone, cfg_scale)
            ax.set_title(f"{backbone}, cfg {cfg_scale:g}\n" + (r_text(row) if row is not None else ""), fontsize=6.5)
            ax.set_xlabel(metric.replace("_", " "), fontsize=8)
            ax.set_ylabel(f"generation {target}", fontsize=8)
    _legend(fig, colours)
    fig.tight_layout()
    return _save(fig, out_dir / f"fig9_transport_{safe_name(target)}.png")


def seed_figure(generation: pd.DataFrame, seeds: pd.DataFrame, clusters: pd.Series | None, target: str,
                out_dir: Path) -> Path | None:
    """Each tokenizer's target over its seeds (mean ± SD) per backbone and scale; None without repeats."""
    from .correlations import ALL_FAMILIES, target_values

    values = target_values(generation, target)
    if values.empty or values.groupby(["tokenizer", "backbone", "cfg_scale"]).size().max() < 2:
        return None
    colours = cluster_colours(_clusters_of(clusters, values["tokenizer"].unique()))
    groups = _clusters_of(clusters, values["tokenizer"].unique())
    fig, grid = panel_grid(values, max(4.0, 0.3 * values["tokenizer"].nunique() + 1.5), 3.2)
    for (backbone, cfg_scale), ax in grid.items():
        panel = values[(values["backbone"] == backbone) & np.isclose(values["cfg_scale"], cfg_scale)]
        summary = panel.groupby("tokenizer")["value"].agg(["mean", "std", "count"]).sort_values("mean")
        for k, (tokenizer, row) in enumerate(summary.iterrows()):
            c = colours[groups[tokenizer]]
            ax.errorbar(k, row["mean"], yerr=row["std"] if row["count"] > 1 else None, fmt="o", color=c, capsize=2)
            spread = panel.loc[panel["tokenizer"] == tokenizer, "value"]
            ax.scatter(np.full(len(spread), k), spread, s=6, color=c, alpha=0.5)
        ax.set_xticks(range(len(summary)), summary.index, rotation=45, ha="right", fontsize=6)
        match = seeds[(seeds["target"] == target) & (seeds["backbone"] == backbone)
                      & np.isclose(seeds["cfg_scale"], cfg_scale)]
        if len(match):
            match = match[match["family"] == ALL_FAMILIES] if (match["family"] == ALL_FAMILIES).any() else match
            m = match.iloc[0]
            ax.set_title(f"{backbone}, cfg {cfg_scale:g}: between-tokenizer SD / seed SD = {m.ratio:.2f}", fontsize=7)
        ax.set_ylabel(f"generation {target}", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    _legend(fig, colours)
    fig.tight_layout()
    return _save(fig, out_dir / f"seed_noise_{safe_name(target)}.png")


def trained_vs_untrained(reconstruction: pd.DataFrame, generation: pd.DataFrame, target: str,
                         out_dir: Path, clusters: pd.Series | None = None) -> Path:
    """Reconstruction and generation FD of the trained models next to their untrained selves (tick labels in
    the colour of each tokenizer's cluster)."""
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
    groups = _clusters_of(clusters, names)
    colours = cluster_colours(groups)
    for ax in axes:
        ax.set_xticks(positions, names, rotation=30, ha="right", fontsize=8)
        for label, name in zip(ax.get_xticklabels(), names):
            label.set_color(colours[groups[name]] if clusters is not None else "black")
        ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:  # above the panel: inside, it covered bars
            ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.08), ncol=2, frameon=False)
        ax.grid(alpha=0.3, axis="y")
    if clusters is not None:
        _legend(fig, colours)
    fig.tight_layout()
    return _save(fig, out_dir / "trained_vs_untrained.png")


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
    # seed repeats: one line per (tokenizer, backbone, scale), the mean over seeds
    keys = ["tokenizer", "backbone", "cfg_scale", "segment", "t_start", "t_end"]
    out = out.groupby(keys, as_index=False, sort=False)["value"].mean()
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
        # below the axes: inside, the legend covered the VIV(t) curve
        ax.legend(handles, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                  ncol=min(len(labels), 3), frameon=False)
    fig.tight_layout()
    return fig


def length_ratio_figures(generation: pd.DataFrame, metrics: pd.DataFrame, out_dir: Path) -> list[Path]:
    """``length_ratio_<tokenizer>.png`` for every tokenizer with ρ_k rows; returns the written paths."""
    ratios = length_ratio_series(generation)
    viv = viv_curve_series(metrics)
    written = []
    for tokenizer, rows in ratios.groupby("tokenizer"):
        fig = length_ratio_figure(tokenizer, rows, viv[viv["tokenizer"] == tokenizer])
        written.append(_save(fig, Path(out_dir) / f"length_ratio_{safe_name(tokenizer)}.png"))
    return written


# --------------------------------------------------------------------------- all of them


#: the figure tasks of the running :func:`all_figures`, read by the forked worker processes (not pickled)
_TASKS: list = []


def _run_task(index: int):
    function, args = _TASKS[index]
    return function(*args)


def all_figures(t: dict, spec: dict, out_dir: Path, jobs: int = 1) -> list[Path]:
    """Every figure of the tables ``t`` (the names of workflow/layout.py TABLES) into ``out_dir``.

    ``jobs`` > 1 draws the figures in that many forked processes (each figure is drawn by one process
    from the same tables, so the files are those of ``jobs=1``); the slowest tasks are handed out first.
    """
    from ..errors import DiffusabilityError
    from . import correlations as corr
    from .predict import tokenizer_cluster

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = spec.get("target", "fd")
    tokenizers, generation, correlations = t["tokenizers"], t["generation"], t["correlations"]
    try:
        clusters = tokenizer_cluster(tokenizers)
    except DiffusabilityError:  # a tokenizers table without regularizer or cluster: one colour
        clusters = None
    proxies = corr.proxy_matrix(t["metrics"], t["reconstruction"])
    targets = list(dict.fromkeys([target] + sorted(set(correlations.get("target", pd.Series(dtype=str)))
                                                    - {target})))
    # (function, arguments) per figure or group of figures, the slowest first (one scatter per proxy,
    # then the many-panel figures)
    tasks = [(scatter_figures, (proxies, generation, correlations, target, out_dir, clusters))]
    perspectives = t.get("perspectives")
    has_perspectives = perspectives is not None and len(perspectives) > 0
    if has_perspectives:
        for goal in targets:
            tasks.append((perspectives_figure, (proxies, generation, perspectives, tokenizers, clusters, goal,
                                                out_dir)))
    pairs = t.get("perspective_pairs")
    if pairs is not None:
        tasks.append((pairs_figure, (proxies, generation, pairs, correlations, clusters, target, out_dir, tokenizers)))
    tasks.append((trained_vs_untrained, (t["reconstruction"], generation, target, out_dir, clusters)))
    tasks.append((length_ratio_figures, (generation, t["metrics"], out_dir)))
    for goal in targets:
        name = "correlation_heatmap" if goal == target else f"correlation_heatmap_{safe_name(goal)}"
        tasks.append((correlation_heatmap, (correlations, out_dir, goal, name)))
    tasks.append((intervals_figure, (correlations, target, out_dir)))
    if has_perspectives:
        for goal in targets:
            tasks.append((backbones_figure, (proxies, generation, correlations, perspectives, clusters, goal,
                                             out_dir, tokenizers)))
            tasks.append((families_figure, (proxies, generation, correlations, perspectives, clusters, goal,
                                            out_dir, tokenizers)))
            optima = t.get("guidance_optima")
            if optima is not None and len(optima):
                tasks.append((guidance_curves, (generation, optima, clusters, goal, out_dir)))
                tasks.append((guidance_figure, (proxies, generation, optima, t.get("guidance_correlations"),
                                                _main_columns(perspectives, correlations, goal), clusters, goal,
                                                out_dir)))
    for goal in targets:
        tasks.append((transport_figure, (generation, correlations, clusters, goal, out_dir, tokenizers)))
        if t.get("seeds") is not None:
            tasks.append((seed_figure, (generation, t["seeds"], clusters, goal, out_dir)))

    global _TASKS
    _TASKS = tasks
    try:
        if jobs > 1 and len(tasks) > 1:
            import multiprocessing

            # fork: the workers inherit the tables and tasks instead of receiving pickled copies
            with multiprocessing.get_context("fork").Pool(min(jobs, len(tasks))) as pool:
                results = pool.map(_run_task, range(len(tasks)), chunksize=1)
        else:
            results = [_run_task(index) for index in range(len(tasks))]
    finally:
        _TASKS = []
    written = []
    for result in results:
        written += result if isinstance(result, list) else [result]
    return [path for path in written if path is not None]
