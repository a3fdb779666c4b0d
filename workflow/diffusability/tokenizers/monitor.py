"""A training-time signal: the cheap latent proxies of a fixed image subset, every ``monitor_every`` steps.

The proxies that predict generation quality (analysis/predict.py) can be watched while a tokenizer
trains: every so many steps the encoder maps a fixed subset of images to latents, which are
standardised per channel with their own statistics (as ``diffusability metrics`` does) and measured
with the metric registry — VIV, LNC, SRSS and SEC by default, whichever the inputs allow (SRSS needs
masks, VIV and LNC labels). The result is one flat row ``{"monitor_<metric>": value, …,
"monitor_seconds": s}`` for the training log.

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
                params: dict | None = None, batch_size: int = 256, device=None, prefix: str = PREFIX) -> dict:
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

    Returns
    -------
    dict
        ``{prefix + metric: value}`` for every registry row (SEC adds its sweep ``sec_r*``), plus
        ``prefix + "seconds"`` (encoding and metrics) and ``prefix + "n"`` (images).

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
    with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices(device)):
        latents = encode_subset(encode, images, batch_size, device)
        grid = tuple(latents.shape[2:])
        if masks is not None:
            masks = torch.as_tensor(np.asarray(masks)).bool()
            if tuple(masks.shape[1:]) != grid:
                masks = pool_masks_to_grid(masks, grid, rule="max")
        if names is None:
            have = {"labels": labels is not None, "masks": masks is not None}
            names = [m for m in DEFAULT_PROXIES if all(have.get(r, False) for r in requirements(m))]
        latents = normalize_latents(latents, *channel_stats(latents))
        rows = compute_metrics(latents, None if labels is None else torch.as_tensor(np.asarray(labels)), masks,
                               names=list(names), params=default_params(grid) if params is None else params)
    row = {prefix + metric: float(value) for metric, value in zip(rows["metric"], rows["value"])}
    row[prefix + "seconds"] = time.perf_counter() - started
    row[prefix + "n"] = int(latents.shape[0])
    return row


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
                 params: dict | None = None, batch_size: int = 256):
        self.images, self.labels, self.masks = images, labels, masks
        self.names, self.params, self.batch_size = names, params, batch_size

    @classmethod
    def from_split(cls, images, labels=None, masks=None, size: int = 256, seed: int = 0, **kwargs) -> "TokenizerMonitor":
        """The monitor of a fixed subset (:func:`fixed_subset`) of a split; arrays are copied (a few MB)."""
        index = fixed_subset(len(images), min(size, len(images)), seed,
                             None if labels is None else np.asarray(labels))
        def take(array):  # numpy, torch or a lazily read split (shards gather by index)
            return None if array is None else np.asarray(array[index])

        return cls(take(images), take(labels), take(masks), **kwargs)

    def __call__(self, model) -> dict:
        """The row of ``model`` (an nn.Module with ``encode(x).mode()``), in eval mode, restored after."""
        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            return monitor_row(lambda x: model.encode(x).mode(), self.images, self.labels, self.masks, self.names,
                               self.params, self.batch_size, device)
        finally:
            model.train(was_training)
