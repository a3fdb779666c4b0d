"""A training-time signal: the cheap latent proxies of a fixed validation subset, every ``monitor_every`` steps.

The proxies that predict generation quality (analysis/predict.py) can be watched while a tokenizer
trains: every so many steps the encoder maps a fixed subset of validation images (chosen once by the
run's seed, class-balanced) to latents — the posterior mean, so that no draw is made — which are
standardised per channel with their own statistics (as ``diffusability metrics`` does) and measured
with the metric registry: VIV, LNC, SRSS and SEC by default, whichever the inputs allow (SRSS needs
masks, VIV and LNC labels; the split's pixel masks are max-pooled onto the latent grid as the encode
stage's default ``mask_pooling: max`` does). The result is one flat row ``{"monitor_<metric>": value, …,
"monitor_seconds": s}`` for the training log.

With a study (``monitor_study``, :mod:`diffusability.analysis.monitor_predictor`), the row also holds the study predictor's
estimate of the generation target per backbone and guidance scale, ``monitor_predicted_<backbone>_cfg<s>``
with its ``_lower`` / ``_upper`` prediction interval, from the proxies the predictor's models use
(computed with the study's recorded metric parameters, in place of the defaults of the same metric).
:func:`monitor_figure` plots the columns against the step (``monitor.png`` beside the training log).

The monitor leaves training exactly as it was: it runs under ``torch.no_grad``, in eval mode (restored
after), and inside ``torch.random.fork_rng`` so that no random draw of the training run moves — a run
with the monitor ends with the weights of a run without it, and resumes to the bit.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import require

#: the proxies of the predictor's candidates that cost milliseconds at a few hundred images
DEFAULT_PROXIES = ("viv_uniform", "lnc", "srss", "sec")
PREFIX = "monitor_"


def fixed_subset(count: int, size: int, seed: int, labels: Any = None) -> np.ndarray:
    """Sorted indices of a fixed subset of ``size`` of ``count`` images, a function of ``seed`` (and labels).

    With labels the subset is class-balanced with at least two images per class (class-conditional VIV
    needs two): ``max(2, size // n_classes)`` images from each of ``size // per_class`` seeded classes.

    Parameters
    ----------
    count : number of images; size : subset size (≤ count); seed : the run's seed.
    labels : optional int (count,) class labels.

    Returns
    -------
    ndarray of int64, shape (≤ size,)

    Examples
    --------
    >>> labels = np.arange(100) % 4
    >>> subset = fixed_subset(100, 16, seed=0, labels=labels)
    >>> len(subset), np.bincount(labels[subset]).tolist()
    (16, [4, 4, 4, 4])
    """
    from ..seeding import numpy_rng

    require(size >= 2, f"monitor: subset size {size} < 2")
    rng = numpy_rng(seed, "tokenizer-monitor")
    if labels is None:
        return np.sort(rng.permutation(count)[:size]).astype(np.int64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    per_class = max(2, size // len(classes))
    chosen = rng.permutation(classes)[:max(1, size // per_class)]
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in chosen]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def encode_subset(encode: Callable, images, batch_size: int = 256, device=None):
    """uint8 images (N, H, W, 3) → float32 CPU latents (N, C, h, w) through ``encode`` (float NCHW in [-1, 1])."""
    import torch

    from ..imaging import to_model_input

    pieces = []
    for start in range(0, len(images), batch_size):
        x = to_model_input(torch.as_tensor(np.asarray(images[start:start + batch_size])))
        pieces.append(encode(x.to(device) if device is not None else x).float().cpu())
    latents = torch.cat(pieces)
    require(latents.ndim == 4, f"monitor: the encoder must return latents (N, C, h, w), got {tuple(latents.shape)}")
    return latents


def default_params(grid: tuple[int, int]) -> dict:
    """SRSS's FG/BG token filter scaled to the grid: h·w/8 tokens, at most iREPA's 64 (8 on the demo's 8×8)."""
    tokens = min(64, grid[0] * grid[1] // 8)
    return {"srss": {"min_fg": tokens, "min_bg": tokens}}


def monitor_row(encode: Callable, images, labels=None, masks=None, names: Sequence[str] | None = None,
                params: dict | None = None, batch_size: int = 256, device=None, prefix: str = PREFIX,
                valid=None, predictor: Callable | None = None) -> dict:
    """The proxies of ``encode``'s latents of a fixed subset, as one flat log row.

    Parameters
    ----------
    encode : callable
        float (B, 3, H, W) in [-1, 1] → latents (B, C, h, w), e.g. ``lambda x: model.encode(x).mode()``.
    images : uint8 (N, H, W, 3) numpy or torch.
    labels : optional int (N,); masks : optional bool (N, H, W) at image resolution (max-pooled onto
        the latent grid, as ``encode`` pools the val masks) or already (N, h, w).
    names : metric names (default: :data:`DEFAULT_PROXIES` that the given inputs allow; names given
        explicitly must be computable, else DiffusabilityError).
    params : ``{metric | group | computation: {…}}`` as for the registry (default :func:`default_params`).
    valid : optional bool (N, H, W): pixels whose mask is known (ImageNet's ``mask_valid``); others never
        count as foreground.
    predictor : optional :class:`~diffusability.analysis.monitor_predictor.StudyPredictor` (a callable
        ``(latents, labels, masks) → ({proxy: value}, prediction rows)`` with the registry metrics it runs in
        ``computed``): its proxies are logged in place of the default-parameter computation of those
        metrics, its predictions as
        ``prefix + "predicted_<backbone>_cfg<scale>"`` (+ ``_lower``, ``_upper``).

    Returns
    -------
    dict
        ``{prefix + metric: value}`` for every registry row (SEC adds its sweep ``sec_r*``), plus
        ``prefix + "seconds"`` (encoding, metrics and prediction) and ``prefix + "n"`` (images).

    Examples
    --------
    >>> import torch
    >>> images = np.random.default_rng(0).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    >>> pool = lambda x: torch.nn.functional.avg_pool2d(x, 4)  # a stand-in encoder: (B, 3, 4, 4)
    >>> row = monitor_row(pool, images, names=["sec"])
    >>> sorted(row)[:3], row["monitor_n"]
    (['monitor_n', 'monitor_sec', 'monitor_sec_r0.25'], 32)
    """
    import torch

    from ..data.masks import pool_masks_to_grid
    from ..metrics.normalization import channel_stats, normalize_latents
    from ..metrics.registry import compute_metrics, requirements

    started = time.perf_counter()
    row: dict = {}
    with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices(device)):
        latents = encode_subset(encode, images, batch_size, device)
        grid = tuple(latents.shape[2:])
        if masks is not None:
            masks = torch.as_tensor(np.asarray(masks)).bool()
            if tuple(masks.shape[1:]) != grid:
                masks = pool_masks_to_grid(masks, grid, rule="max",
                                           valid=None if valid is None else torch.as_tensor(np.asarray(valid)).bool())
        if labels is not None:
            labels = torch.as_tensor(np.asarray(labels))
        if names is None:
            have = {"labels": labels is not None, "masks": masks is not None}
            names = [m for m in DEFAULT_PROXIES if all(have.get(r, False) for r in requirements(m))]
        latents = normalize_latents(latents, *channel_stats(latents))
        values, predictions = predictor(latents, labels, masks) if predictor is not None else ({}, [])
        # a metric the predictor computed (with the study's parameters) is not computed again with the defaults
        names = [name for name in names if name not in getattr(predictor, "computed", ())]
        if names:
            rows = compute_metrics(latents, labels, masks, names=list(names),
                                   params=default_params(grid) if params is None else params)
            row.update({prefix + metric: float(value) for metric, value in zip(rows["metric"], rows["value"])})
    row.update({prefix + proxy: float(value) for proxy, value in values.items()})
    if predictions:
        row.update(prediction_columns(predictions, prefix))
    row[prefix + "seconds"] = time.perf_counter() - started
    row[prefix + "n"] = int(latents.shape[0])
    return row


def prediction_columns(rows: list[dict], prefix: str) -> dict[str, float]:
    """``{prefix}predicted_<backbone>_cfg<scale>`` (and ``_lower``, ``_upper``) of prediction rows.

    Examples
    --------
    >>> prediction_columns([{"backbone": "sit", "cfg_scale": 1.5, "predicted": 9.0, "lower": 8.0, "upper": 10.0}],
    ...                    "monitor_")
    {'monitor_predicted_sit_cfg1.5': 9.0, 'monitor_predicted_sit_cfg1.5_lower': 8.0,
     'monitor_predicted_sit_cfg1.5_upper': 10.0}
    """
    out = {}
    for row in rows:
        key = f"{prefix}predicted_{row['backbone']}_cfg{float(row['cfg_scale']):g}"
        out[key] = float(row["predicted"])
        out[key + "_lower"], out[key + "_upper"] = float(row["lower"]), float(row["upper"])
    return out


def _cuda_devices(device) -> list:
    """The CUDA device whose RNG the monitor must leave untouched too (fork_rng forks the CPU's always)."""
    import torch

    if device is not None and torch.device(device).type == "cuda":
        return [torch.device(device).index or 0]
    return []


class TokenizerMonitor:
    """A fixed subset and its metric settings; calling it with the tokenizer gives the log row.

    Examples
    --------
    >>> from diffusability.data.shapes import generate_shapes
    >>> from diffusability.tokenizers.factory import build_tokenizer
    >>> data = generate_shapes(64, 32, seed=0)
    >>> monitor = TokenizerMonitor.from_split(data["images"], data["labels"], data["masks"], size=32, seed=0)
    >>> row = monitor(build_tokenizer({"channel_mult": [1, 2, 2]}))
    >>> {"monitor_viv_uniform", "monitor_lnc", "monitor_srss", "monitor_sec"} <= set(row)
    True
    """

    def __init__(self, images, labels=None, masks=None, names: Sequence[str] | None = None,
                 params: dict | None = None, batch_size: int = 256, valid=None, predictor: Callable | None = None):
        self.images, self.labels, self.masks, self.valid = images, labels, masks, valid
        self.names, self.params, self.batch_size, self.predictor = names, params, batch_size, predictor

    @classmethod
    def from_split(cls, images, labels=None, masks=None, size: int = 256, seed: int = 0, valid=None,
                   **kwargs) -> "TokenizerMonitor":
        """The monitor of a fixed subset (:func:`fixed_subset`) of a split; arrays are copied (a few MB).

        ``valid``: the split's ``mask_valid`` (bool (N, H, W)) where it has one; ``kwargs`` go to the constructor.
        """
        index = fixed_subset(len(images), min(size, len(images)), seed,
                             None if labels is None else np.asarray(labels))
        def take(array):  # numpy, torch or a lazily read split (shards gather by index)
            return None if array is None else np.asarray(array[index])

        return cls(take(images), take(labels), take(masks), valid=take(valid), **kwargs)

    def __call__(self, model) -> dict:
        """The row of ``model`` (an nn.Module with ``encode(x).mode()``), in eval mode, restored after."""
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            return monitor_row(lambda x: model.encode(x).mode(), self.images, self.labels, self.masks, self.names,
                               self.params, self.batch_size, device, valid=self.valid, predictor=self.predictor)
        finally:
            model.train(was_training)


#: the columns of a monitor row that are not proxies
_BOOKKEEPING = ("seconds", "n")


def monitor_figure(log, path, title: str = "", prefix: str = PREFIX, target: str = "fd"):
    """The monitor's columns of a training log against the step: one panel per proxy, one per prediction.

    Proxy panels hold ``prefix + metric`` (SEC's panel also its sweep ``sec_r*``, lighter); prediction panels
    ``prefix + "predicted_<backbone>_cfg<s>"`` with its ``_lower``–``_upper`` interval shaded. A log without
    monitor rows gets a figure that says so.

    Parameters
    ----------
    log : DataFrame
        The training log (``train_log.parquet``): ``step`` and the monitor's columns (NaN between evaluations).
    path : path of the PNG to write; title : the figure's title (e.g. the tokenizer's name).
    target : the predicted generation metric, for the labels (the monitor predicts ``fd``, i.e. gFID).

    Returns
    -------
    Path
        ``path``.
    """
    from pathlib import Path

    from ..io import atomic_path

    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    columns = [c for c in log.columns if c.startswith(prefix)]
    rows = log.dropna(subset=[prefix + "seconds"]) if prefix + "seconds" in log.columns else log.iloc[:0]
    predicted = [c for c in columns if c.startswith(prefix + "predicted_") and not c.endswith(("_lower", "_upper"))]
    proxies = [c for c in columns if c not in predicted and not c.startswith(prefix + "predicted_")
               and c[len(prefix):] not in _BOOKKEEPING and not c.startswith(prefix + "sec_r")]
    sweep = [c for c in columns if c.startswith(prefix + "sec_r")]
    if sweep and prefix + "sec" not in proxies:
        proxies.append(prefix + "sec")  # the sweep alone still gets its panel
    panels = proxies + predicted
    ncols = min(4, max(1, len(panels)))
    nrows = max(1, -(-len(panels) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.3 * ncols, 2.6 * nrows), squeeze=False)
    flat = [ax for line in axes for ax in line]
    if rows.empty or not panels:
        flat[0].text(0.5, 0.5, "no monitor evaluations in this log", ha="center", va="center", fontsize=9)
    step = rows["step"].to_numpy() if not rows.empty else np.array([])
    for ax, column in zip(flat, panels):
        name = column[len(prefix):]
        if column in predicted:
            ax.fill_between(step, rows[column + "_lower"], rows[column + "_upper"], color="tab:orange", alpha=0.25,
                            linewidth=0, label="prediction interval")
            ax.plot(step, rows[column], color="tab:orange", marker="o", markersize=3, label="predicted")
            backbone, _, scale = name[len("predicted_"):].rpartition("_cfg")
            ax.set_title(f"predicted {target}: {backbone}, cfg {scale}", fontsize=8)
            ax.legend(fontsize=6, loc="best")
        else:
            if column in rows.columns:
                ax.plot(step, rows[column], color="tab:blue", marker="o", markersize=3, label=name)
            if name == "sec":
                for i, extra in enumerate(sweep):
                    ax.plot(step, rows[extra], color="tab:blue", alpha=0.25 + 0.2 * i, linewidth=0.8,
                            linestyle="--", label=extra[len(prefix):])
                if sweep:
                    ax.legend(fontsize=6, loc="best")
            ax.set_title(name, fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))  # whole, round steps
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    for ax in flat[max(1, len(panels)):]:
        ax.set_axis_off()
    n = int(rows[prefix + "n"].iloc[0]) if not rows.empty and prefix + "n" in rows.columns else 0
    seconds = float(rows[prefix + "seconds"].median()) if not rows.empty else float("nan")
    heading = f"training-time monitor: {n} images, median {seconds:.2g} s per evaluation"
    fig.suptitle(f"{title} — {heading}" if title else heading, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (training jobs have no display).

    Not analysis.figures' helper: importing it would make the analysis package part of every monitored
    training job's code identity.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
