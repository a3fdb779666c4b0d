"""Latent arrays read from a user's file, checked and turned into tensors (``metrics``, ``predict``)."""

from __future__ import annotations

from ..errors import DiffusabilityError, require


def read_latent_inputs(arrays: dict, source: str) -> tuple:
    """Validate ``latents`` / ``labels`` / ``masks`` arrays of a file → torch tensors (labels/masks may be None)."""
    import numpy as np
    import torch

    require("latents" in arrays, f"{source}: has no array 'latents' (has {sorted(arrays)})")
    latents = arrays["latents"]
    require(np.issubdtype(latents.dtype, np.floating),
            f"{source}: 'latents' must be float (N, C, H, W), got dtype {latents.dtype}")
    require(latents.ndim == 4, f"{source}: 'latents' must have shape (N, C, H, W), got {latents.shape}")
    require(all(d >= 1 for d in latents.shape), f"{source}: 'latents' is empty, shape {latents.shape}")
    if not np.isfinite(latents.sum(dtype=np.float64)):  # exact test: see as_latent_tensor
        raise DiffusabilityError(f"{source}: 'latents' contains {int((~np.isfinite(latents)).sum())} "
                                 "NaN/Inf values")
    n, _, h, w = latents.shape
    labels = arrays.get("labels")
    if labels is not None:
        require(np.issubdtype(labels.dtype, np.integer),
                f"{source}: 'labels' must be integer (N,), got dtype {labels.dtype}")
        require(labels.shape == (n,), f"{source}: 'labels' must have shape ({n},), got {labels.shape}")
        labels = torch.from_numpy(labels.astype(np.int64))
    masks = arrays.get("masks")
    if masks is not None:
        require(masks.dtype == np.bool_ or (np.issubdtype(masks.dtype, np.integer) and np.isin(masks, (0, 1)).all()),
                f"{source}: 'masks' must be bool (N, H, W), got dtype {masks.dtype}")
        require(masks.shape == (n, h, w),
                f"{source}: 'masks' must have shape {(n, h, w)} (the latent grid), got {masks.shape}")
        masks = torch.from_numpy(masks.astype(bool))
    return torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32)), labels, masks
