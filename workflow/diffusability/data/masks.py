"""Foreground masks at the latent grid: pooling pixel masks onto h×w tokens.

Two rules (docs/metrics.md §0.4):

- ``"max"`` (iREPA, used for SRSS): a token is foreground if **any** of its pixels is.
- ``"fraction"`` (the [CHOICE] for LNC): a token is foreground if the foreground share of its
  *valid* pixels is at least ``threshold``; pixels with ``valid=False`` (ImageNet-S "ignore",
  id 1000) count as neither foreground nor background. A token with no valid pixel is
  background. ``fallback_to_max`` re-pools an image with "max" when "fraction" leaves it
  without any foreground token.

Pure numpy on arrays (torch tensors are accepted and returned as torch); never opens a file.
"""

from __future__ import annotations

import numpy as np

from ..errors import require

POOL_RULES = ("max", "fraction")


def _as_numpy(array, name: str) -> tuple[np.ndarray, bool]:
    """(numpy view, was_torch) of a numpy array or torch tensor."""
    if type(array).__module__.startswith("torch"):
        return array.detach().cpu().numpy(), True
    return np.asarray(array), False


def pool_masks_to_grid(masks, grid: tuple[int, int], rule: str = "max", threshold: float = 0.5,
                       valid=None, fallback_to_max: bool = False):
    """Pool pixel masks bool (N, H, W) onto a token grid ``(h, w)`` → bool (N, h, w).

    Args:
        masks: bool (N, H, W) foreground at image resolution; H % h == 0 and W % w == 0.
        grid: (h, w) latent grid size.
        rule: ``"max"`` (any FG pixel) or ``"fraction"`` (FG share of valid pixels >= threshold).
        threshold: the FG share for ``"fraction"``, in (0, 1].
        valid: optional bool (N, H, W); False pixels are excluded from the ``"fraction"``
            denominator and never count as foreground (for either rule).
        fallback_to_max: with ``"fraction"``, images left with no FG token use ``"max"`` instead.

    Returns:
        bool (N, h, w), numpy (or torch if ``masks`` was a torch tensor).
    """
    array, was_torch = _as_numpy(masks, "masks")
    require(array.ndim == 3, f"masks: expected shape (N, H, W), got {tuple(array.shape)}")
    require(array.dtype == np.bool_, f"masks: expected dtype bool, got {array.dtype}")
    require(len(grid) == 2 and all(isinstance(g, (int, np.integer)) and g > 0 for g in grid),
            f"grid={grid!r}: expected two positive integers (h, w)")
    require(rule in POOL_RULES, f"rule={rule!r}: expected one of {POOL_RULES}")
    require(0.0 < threshold <= 1.0, f"threshold={threshold!r}: expected a value in (0, 1]")
    n, height, width = array.shape
    h, w = int(grid[0]), int(grid[1])
    require(height % h == 0 and width % w == 0,
            f"masks: image size {height}x{width} is not divisible by the grid {h}x{w}")
    if valid is not None:
        valid_array, _ = _as_numpy(valid, "valid")
        require(valid_array.shape == array.shape and valid_array.dtype == np.bool_,
                f"valid: expected bool of shape {tuple(array.shape)}, got "
                f"{valid_array.dtype} {tuple(valid_array.shape)}")
        array = array & valid_array
    else:
        valid_array = None

    blocks = array.reshape(n, h, height // h, w, width // w)
    any_fg = blocks.any(axis=(2, 4))
    if rule == "max":
        pooled = any_fg
    else:
        fg_count = blocks.sum(axis=(2, 4), dtype=np.int64)
        if valid_array is None:
            valid_count = np.full_like(fg_count, (height // h) * (width // w))
        else:
            valid_count = valid_array.reshape(blocks.shape).sum(axis=(2, 4), dtype=np.int64)
        # fg / valid >= threshold, written without division so empty tokens are simply False.
        pooled = (valid_count > 0) & (fg_count >= threshold * valid_count)
        if fallback_to_max:
            empty = ~pooled.any(axis=(1, 2))
            pooled[empty] = any_fg[empty]
    if was_torch:
        import torch

        return torch.from_numpy(np.ascontiguousarray(pooled))
    return pooled


def images_with_enough_tokens(token_masks, min_foreground: int = 64, min_background: int = 64) -> np.ndarray:
    """bool (N,): images whose token mask bool (N, h, w) has enough FG and BG tokens.

    iREPA keeps only images with >= 64 foreground and >= 64 background tokens out of 16×16;
    pass smaller minima for smaller grids (e.g. 8×8 latents).
    """
    array, _ = _as_numpy(token_masks, "token_masks")
    require(array.ndim == 3 and array.dtype == np.bool_,
            f"token_masks: expected bool (N, h, w), got {array.dtype} {tuple(array.shape)}")
    foreground = array.sum(axis=(1, 2))
    background = array.shape[1] * array.shape[2] - foreground
    return (foreground >= min_foreground) & (background >= min_background)
