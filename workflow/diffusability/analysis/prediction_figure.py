"""The predicted-vs-observed figure of the study's leave-one-cluster-out predictions."""

from __future__ import annotations

from pathlib import Path


def _figure_rows(predictions, backbone):
    """The honest predictions of a backbone: the nested selection's when there are some, else the selected model's."""
    from .predict import NESTED

    rows = predictions[predictions["backbone"] == backbone]
    nested = rows[rows["model"] == NESTED]
    return (nested, "nested selection") if len(nested) else (rows[rows["selected"]], "best model (not nested)")


def prediction_figure(predictions, scores, target: str, path: Path) -> Path:
    """Predicted (held out) vs observed target: one panel per backbone, colour = cluster, marker = guidance scale,
    bars = the prediction intervals; the dotted line is predicted = observed."""
    from ..io import atomic_path
    from .figures import _pyplot

    plt = _pyplot()
    backbones = sorted(predictions["backbone"].unique())
    fig, axes = plt.subplots(1, max(1, len(backbones)), figsize=(4.4 * max(1, len(backbones)), 4.0), squeeze=False)
    if not backbones:
        axes[0][0].text(0.5, 0.5, "no leave-one-cluster-out test:\ntoo few tokenizers or clusters",
                        ha="center", va="center", fontsize=9)
        axes[0][0].set_axis_off()
    clusters = sorted(predictions["held_out_group"].unique())
    colours = {c: plt.get_cmap("tab10")(i % 10) for i, c in enumerate(clusters)}
    markers = dict(zip(sorted(predictions["cfg_scale"].unique()), "osD^v<>"))
    for ax, backbone in zip(axes[0], backbones):
        rows, label = _figure_rows(predictions, backbone)
        for row in rows.itertuples(index=False):
            ax.errorbar(row.observed, row.predicted, yerr=[[row.predicted - row.lower], [row.upper - row.predicted]],
                        fmt=markers.get(row.cfg_scale, "o"), color=colours[row.held_out_group], markersize=5,
                        elinewidth=0.8, capsize=2, alpha=0.85)
        if len(rows):
            low, high = rows[["observed", "lower"]].min().min(), rows[["observed", "upper"]].max().max()
            ax.plot([low, high], [low, high], color="0.5", linestyle=":", linewidth=0.8)
        lines = [f"{backbone}: {label}"]
        model = "nested selection" if label == "nested selection" else None
        for cfg_scale in sorted(rows["cfg_scale"].unique()):
            match = scores[(scores["backbone"] == backbone) & (scores["cfg_scale"] == cfg_scale)
                           & ((scores["model"] == model) if model else scores["selected"])]
            if len(match):
                s = match.iloc[0]
                lines.append(f"cfg {cfg_scale:g}: R²oc {s.r2_oc:.2f}, ρ {s.spearman_oc:.2f}, cover {s.coverage:.2f}")
        ax.set_title("\n".join(lines), fontsize=7)
        ax.set_xlabel(f"observed {target}", fontsize=8)
        ax.set_ylabel(f"predicted {target} (cluster held out)", fontsize=8)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colours[c], marker="o", linestyle="", label=c) for c in clusters]
    handles += [plt.Line2D([], [], color="0.3", marker=m, linestyle="", label=f"cfg {w:g}") for w, m in markers.items()]
    if handles:
        axes[0][-1].legend(handles=handles, fontsize=6, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)
