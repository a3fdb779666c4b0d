"""Affine equivariance of an encoder (docs/metrics.md §7): does E(τx) equal τE(x)?

For rotations by k·90° (exact on both grids) and isotropic down-scales s (bilinear,
``align_corners=False``, no antialias — as EQ-VAE trains), per image:
    error       e = |E(τx) − τE(x)|²_F / |τE(x)|²_F          (lower better)
    consistency c = mean over tokens of cos(E(τx)[:, p], τE(x)[:, p])   (higher better)
averaged over images, then over the transforms of each family.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import require
from ..progress import progress


def _scale(tensor: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=False)


def _compare(transformed_encoding: torch.Tensor, encoding_transformed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image relative squared error and mean token cosine of two (B, C, h, w) latents."""
    a, b = transformed_encoding.double(), encoding_transformed.double()
    error = (a - b).pow(2).sum(dim=(1, 2, 3)) / b.pow(2).sum(dim=(1, 2, 3)).clamp_min(1e-30)
    cosine = F.cosine_similarity(a, b, dim=1, eps=1e-8).mean(dim=(1, 2))
    return error, cosine


def affine_equivariance(encode_fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                        rotations=(1, 2, 3), scales=(0.5, 0.75), batch_size: int = 64,
                        latent_mean: torch.Tensor | None = None,
                        latent_std: torch.Tensor | None = None) -> dict:
    """Affine equivariance of an encoder: does ``E(τx)`` equal ``τE(x)``?

    For rotations by k·90° (exact on both grids) and isotropic down-scales s (bilinear,
    ``align_corners=False``, no antialias, as EQ-VAE trains), per image:
    ``error = |E(τx) − τE(x)|²_F / |τE(x)|²_F`` (lower is better) and ``consistency`` = the mean
    over tokens of ``cos(E(τx)[:, p], τE(x)[:, p])`` (higher is better); averaged over images, then
    over the transforms of each family (docs/metrics.md §7).

    Parameters
    ----------
    encode_fn : callable
        Images (B, 3, H, W) in [−1, 1] → latents (B, C, h, w); deterministic (the posterior mean or
        a fixed-seed sample); called under ``torch.no_grad``.
    images : torch.Tensor, shape (N, 3, H, W)
        Float images.
    rotations : sequence of int, default (1, 2, 3)
        Multiples k of 90° (``torch.rot90`` on the last two axes).
    scales : sequence of float, default (0.5, 0.75)
        A factor is used only when H·s and W·s are whole multiples of the encoder stride H/h
        (otherwise the two latents differ in shape); the others are listed in ``skipped_scales``.
    batch_size : int, default 64
    latent_mean, latent_std : torch.Tensor, shape (C,), optional
        Normalise the latents as the diffusion model sees them; None leaves them raw.

    Returns
    -------
    dict
        ``rotate_error``, ``rotate_consistency``, ``scale_error``, ``scale_consistency`` (floats;
        NaN for a family with no usable transform), ``per_transform`` (``{"rot90_k1": {"error",
        "consistency"}, "scale_0.5": …}``), ``skipped_scales`` and ``n``.

    Examples
    --------
    2×2 average pooling commutes with rot90 and, at s = 0.5, with the bilinear down-scale; 0.6 is
    skipped (8 · 0.6 is not a whole number of pixels).

    >>> import torch
    >>> import torch.nn.functional as F
    >>> from diffusability.metrics import affine_equivariance
    >>> images = torch.sin(3 * torch.linspace(-1, 1, 3 * 8 * 8)).reshape(1, 3, 8, 8)
    >>> result = affine_equivariance(lambda x: F.avg_pool2d(x, 2), images, scales=(0.5, 0.6))
    >>> round(result["rotate_error"], 6), round(result["rotate_consistency"], 6)
    (0.0, 1.0)
    >>> result["scale_error"], result["skipped_scales"]
    (0.0, [0.6])
    """
    require(isinstance(images, torch.Tensor) and images.is_floating_point() and images.ndim == 4,
            f"images: expected a float tensor (N, 3, H, W), got "
            f"{getattr(images, 'shape', type(images).__name__)}")
    require(bool(torch.isfinite(images).all()), "images: contain NaN or Inf")
    n, _, height, width = images.shape

    def encode(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = encode_fn(x)
        require(isinstance(z, torch.Tensor) and z.ndim == 4, "encode_fn: must return latents (B, C, h, w)")
        if latent_mean is not None:
            z = (z - latent_mean.view(1, -1, 1, 1).to(z)) / latent_std.view(1, -1, 1, 1).to(z)
        return z

    probe = encode(images[:1])
    lh, lw = probe.shape[2], probe.shape[3]
    require(height % lh == 0 and width % lw == 0 and height // lh == width // lw,
            f"encode_fn: latent grid {lh}x{lw} is not an integer downsampling of images {height}x{width}")
    stride = height // lh
    usable, skipped = [], []
    for s in scales:
        image_size = (round(height * s), round(width * s))
        exact = abs(height * s - image_size[0]) < 1e-9 and abs(width * s - image_size[1]) < 1e-9
        if exact and image_size[0] % stride == 0 and image_size[1] % stride == 0 and image_size[0] > 0:
            usable.append((float(s), image_size))
        else:
            skipped.append(float(s))
    sums = {f"rot90_k{k}": [0.0, 0.0] for k in rotations}
    sums.update({f"scale_{s}": [0.0, 0.0] for s, _ in usable})
    starts = range(0, n, batch_size)
    for start in progress(starts, total=len(starts), desc="equivariance", unit="batch"):
        x = images[start:start + batch_size]
        z = encode(x)
        for k in rotations:
            error, cosine = _compare(encode(torch.rot90(x, k, dims=(2, 3))), torch.rot90(z, k, dims=(2, 3)))
            sums[f"rot90_k{k}"][0] += float(error.sum())
            sums[f"rot90_k{k}"][1] += float(cosine.sum())
        for s, image_size in usable:
            latent_size = (image_size[0] // stride, image_size[1] // stride)
            error, cosine = _compare(encode(_scale(x, image_size)), _scale(z, latent_size))
            sums[f"scale_{s}"][0] += float(error.sum())
            sums[f"scale_{s}"][1] += float(cosine.sum())
    per_transform = {name: {"error": e / n, "consistency": c / n} for name, (e, c) in sums.items()}

    def family_mean(prefix: str, key: str) -> float:
        values = [v[key] for name, v in per_transform.items() if name.startswith(prefix)]
        return sum(values) / len(values) if values else float("nan")

    return {"rotate_error": family_mean("rot90", "error"),
            "rotate_consistency": family_mean("rot90", "consistency"),
            "scale_error": family_mean("scale", "error"),
            "scale_consistency": family_mean("scale", "consistency"),
            "per_transform": per_transform, "skipped_scales": skipped, "n": n}
