"""Latent input checks and the per-channel standardisation every metric is measured in.

The diffusion model sees ``z' = (z - mu_c) / s_c`` with per-channel mean and unbiased std over
``(N, H, W)`` of training latents (docs/metrics.md §0.3); the metrics are computed in those coordinates.
"""

from __future__ import annotations

import torch

from ..errors import DiffusabilityError, require


def as_latent_tensor(latents, name: str = "latents") -> torch.Tensor:
    """Check and return ``latents`` as a floating tensor of shape (N, C, H, W) with finite values.

    Numpy arrays are accepted and converted (no copy where possible); integer or boolean data,
    a wrong rank, an empty batch or a NaN/Inf value raise :class:`DiffusabilityError`.
    """
    if not isinstance(latents, torch.Tensor):
        try:
            latents = torch.as_tensor(latents)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DiffusabilityError(f"{name}: expected a float array (N, C, H, W), got "
                                     f"{type(latents).__name__}") from exc
    require(latents.is_floating_point(),
            f"{name}: expected a floating-point tensor (N, C, H, W), got dtype {latents.dtype}")
    require(latents.ndim == 4,
            f"{name}: expected 4 dimensions (N, C, H, W), got shape {tuple(latents.shape)}")
    require(all(s > 0 for s in latents.shape),
            f"{name}: every dimension must be non-empty, got shape {tuple(latents.shape)}")
    # a finite sum proves every element finite (NaN and ±Inf propagate); only when the sum is not
    # finite (a NaN/Inf, or an overflow of huge finite values) is the exact elementwise check run.
    # The sum stays in the input dtype: a float64-accumulated sum of float32 took 2.9 s at
    # ImageNet-val scale (50 000 × 32×16×16), more than the metrics it guards
    total = latents.sum()
    if not bool(torch.isfinite(total)) and not bool(torch.isfinite(latents).all()):
        raise DiffusabilityError(f"{name}: contains NaN or Inf values "
                                 f"({int((~torch.isfinite(latents)).sum())} of {latents.numel()})")
    return latents


def as_label_tensor(labels, n: int, name: str = "labels") -> torch.Tensor:
    """Check and return integer class labels of shape (n,) as an int64 tensor."""
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    require(not labels.is_floating_point() and labels.dtype != torch.bool,
            f"{name}: expected integer class labels, got dtype {labels.dtype}")
    require(labels.shape == (n,), f"{name}: expected shape ({n},), got {tuple(labels.shape)}")
    return labels.long()


def require_two_classes(labels: torch.Tensor, metric: str, name: str = "labels") -> None:
    """Refuse a metric that compares classes when ``labels`` holds fewer than two of them.

    With one class every neighbour agrees (LNC = 1) and there is no between-class structure to
    measure: the value would look perfect and mean nothing.
    """
    classes = int(torch.unique(labels).numel())
    require(classes >= 2, f"{name}: {metric} needs at least two classes, got {classes} "
                          f"(every label is {int(labels[0]) if labels.numel() else 'absent'})")


def as_mask_tensor(masks, shape: tuple[int, int, int], name: str = "masks") -> torch.Tensor:
    """Check and return boolean foreground masks of shape (N, H, W) (the latent grid)."""
    if not isinstance(masks, torch.Tensor):
        masks = torch.as_tensor(masks)
    require(masks.dtype == torch.bool or not masks.is_floating_point(),
            f"{name}: expected boolean foreground masks, got dtype {masks.dtype}")
    require(tuple(masks.shape) == tuple(shape),
            f"{name}: expected shape {tuple(shape)} (N, H, W at latent resolution), "
            f"got {tuple(masks.shape)}")
    if masks.dtype != torch.bool:
        require(bool(((masks == 0) | (masks == 1)).all()),
                f"{name}: expected boolean (0/1) foreground masks")
        masks = masks.bool()
    return masks


def channel_stats(latents: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased standard deviation over (N, H, W).

    These are the statistics ``encode`` stores with every tokenizer's latents (``stats.safetensors``)
    and the diffusion model is trained on ``(z − mean) / std``; the metrics are measured in the same
    coordinates (docs/metrics.md §0.3).

    Parameters
    ----------
    latents : torch.Tensor, shape (N, C, H, W)
        Floating-point latents; at least two values per channel.
    chunk : int, default 1024
        Images per pass; the two passes (mean, then squared deviations) accumulate in float64
        without a full float64 copy.

    Returns
    -------
    mean, std : torch.Tensor, shape (C,)
        In the input's dtype; ``std`` divides by ``N·H·W − 1``.

    Examples
    --------
    >>> import torch
    >>> from diffusability.metrics import channel_stats
    >>> latents = torch.arange(16.0).reshape(2, 2, 2, 2)   # N = 2 images, C = 2 channels, 2×2 grid
    >>> mean, std = channel_stats(latents)
    >>> mean
    tensor([5.5000, 9.5000])
    >>> std
    tensor([4.4401, 4.4401])
    """
    latents = as_latent_tensor(latents)
    n_values = latents.shape[0] * latents.shape[2] * latents.shape[3]
    require(n_values >= 2, f"latents: need at least 2 values per channel for an unbiased std, "
                           f"got shape {tuple(latents.shape)}")
    # two chunked passes in float64 (mean, then squared deviations): no full float64 copy, and no
    # cancellation of the E[x²] − E[x]² form when the mean is large
    total = torch.zeros(latents.shape[1], dtype=torch.float64, device=latents.device)
    for start in range(0, latents.shape[0], chunk):
        total += latents[start:start + chunk].double().sum(dim=(0, 2, 3))
    mean = total / n_values
    squares = torch.zeros_like(total)
    for start in range(0, latents.shape[0], chunk):
        block = latents[start:start + chunk].double() - mean.view(1, -1, 1, 1)
        squares += block.pow(2).sum(dim=(0, 2, 3))
    std = (squares / (n_values - 1)).sqrt()
    return mean.to(latents.dtype), std.to(latents.dtype)


def normalize_latents(latents: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Standardise latents per channel: ``(latents − mean[c]) / std[c]``.

    Parameters
    ----------
    latents : torch.Tensor, shape (N, C, H, W)
        Floating-point latents.
    mean, std : array-like, shape (C,)
        Per-channel statistics, e.g. :func:`channel_stats` of the training latents. A zero or
        non-finite std is refused (a constant channel cannot be standardised).

    Returns
    -------
    torch.Tensor, shape (N, C, H, W)
        In the latents' dtype.

    Examples
    --------
    >>> import torch
    >>> from diffusability.metrics import channel_stats, normalize_latents
    >>> latents = torch.arange(16.0).reshape(2, 2, 2, 2)
    >>> z = normalize_latents(latents, *channel_stats(latents))
    >>> z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))
    (tensor([0., 0.]), tensor([1., 1.]))
    """
    latents = as_latent_tensor(latents)
    mean = torch.as_tensor(mean, dtype=latents.dtype, device=latents.device).reshape(-1)
    std = torch.as_tensor(std, dtype=latents.dtype, device=latents.device).reshape(-1)
    n_channels = latents.shape[1]
    require(mean.shape == (n_channels,), f"mean: expected shape ({n_channels},), got {tuple(mean.shape)}")
    require(std.shape == (n_channels,), f"std: expected shape ({n_channels},), got {tuple(std.shape)}")
    require(bool(torch.isfinite(mean).all()) and bool(torch.isfinite(std).all()),
            "mean/std: contain NaN or Inf")
    bad = torch.nonzero(std <= 0).flatten().tolist()
    require(not bad, f"std: channels {bad[:10]} have zero std (constant latents cannot be normalised)")
    return (latents - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
