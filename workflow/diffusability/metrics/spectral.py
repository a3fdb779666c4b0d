"""Spectral Energy Concentration (SEC, docs/metrics.md §4): the share of DCT energy at high frequencies.

Per image and channel the orthonormal 2-D DCT-II is ``F = T_H · Z · T_Wᵀ`` (two plain GEMMs over all
images and channels of a cache-sized batch);
the energy ``E(u, v)`` is the mean of ``F²`` over images and channels, and SEC_r is the fraction
of the total with Manhattan frequency ``u + v > r · (H + W − 2)``. DC stays in the low band.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import require
from .normalization import as_latent_tensor


def dct_matrix(n: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``T[k, i] = c_k cos(π (2i + 1) k / (2n))``.

    ``c_0 = sqrt(1/n)`` and ``c_k = sqrt(2/n)`` otherwise, so ``T Tᵀ = I`` and ``T @ x`` equals
    ``scipy.fft.dct(x, norm="ortho")``; a latent channel ``Z`` (H, W) transforms as
    ``T_H · Z · T_Wᵀ``.

    Parameters
    ----------
    n : int
        Size (at least 1).
    dtype : torch.dtype, default torch.float64
    device : torch.device or str, optional

    Returns
    -------
    torch.Tensor, shape (n, n)

    Examples
    --------
    >>> import torch
    >>> from diffusability.metrics import dct_matrix
    >>> T = dct_matrix(4)
    >>> T[0]                                   # the DC row: the mean, scaled to unit norm
    tensor([0.5000, 0.5000, 0.5000, 0.5000], dtype=torch.float64)
    >>> torch.allclose(T @ T.T, torch.eye(4, dtype=torch.float64))
    True
    """
    require(n >= 1, f"dct_matrix: n must be >= 1, got {n}")
    k = torch.arange(n, dtype=torch.float64, device=device)[:, None]
    i = torch.arange(n, dtype=torch.float64, device=device)[None, :]
    matrix = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    matrix[0] = math.sqrt(1.0 / n)
    return matrix.to(dtype)


#: images per chunk: (B, C, H, W) float32 = 8 MiB at B = 256, C = 32, 16×16
DEFAULT_BATCH = 256


def dct_energy(latents: torch.Tensor, batch_size: int = DEFAULT_BATCH, method: str = "auto") -> torch.Tensor:
    """(H, W) float64 mean squared orthonormal DCT-II coefficient over images and channels.

    Args:
        latents: (N, C, H, W).
        method: ``"matmul"`` (DCT matrices, any device; what ``"auto"``, the default, uses) or
            ``"scipy"`` (batched ``scipy.fft.dctn`` with torch's thread count as workers, CPU only;
            1.23 s vs 2.0 s for the matmuls at 50 000 latents 32×16×16 on 2 cores). Each path
            cross-checks the other in the tests.
    """
    latents = as_latent_tensor(latents)
    require(method in ("auto", "matmul", "scipy"), f"sec: method must be auto, matmul or scipy, got {method!r}")
    n, c, h, w = latents.shape
    total = torch.zeros(h, w, dtype=torch.float64, device=latents.device)
    if method == "scipy":
        import scipy.fft

        require(latents.device.type == "cpu", f"sec: method 'scipy' needs CPU latents, got {latents.device}")
        workers = max(1, torch.get_num_threads())
        for start in range(0, n, batch_size):
            block = latents[start:start + batch_size].float().numpy()
            coefficients = scipy.fft.dctn(block, axes=(2, 3), norm="ortho", workers=workers)
            squared = (coefficients * coefficients).reshape(-1, h, w)
            total += torch.from_numpy(squared.sum(axis=0, dtype=np.float64))
        return total / (n * c)
    # float32 transforms (coefficients accurate to ~1e-7 relative); energies accumulate in float64
    t_h_t = dct_matrix(h, dtype=torch.float32, device=latents.device).T.contiguous()
    t_w_t = dct_matrix(w, dtype=torch.float32, device=latents.device).T.contiguous()
    per_chunk = torch.zeros(w, h, dtype=torch.float32, device=latents.device)
    for start in range(0, n, batch_size):
        block = latents[start:start + batch_size].float()
        rows = block.shape[0] * c
        # two plain GEMMs instead of a broadcast batch of tiny 16×16 matmuls (1.6× faster on the CPU):
        # along W on the (B·C·H, W) rows, then along H on the transposed (B·C·W, H) rows
        along_w = (block.reshape(-1, w) @ t_w_t).reshape(rows, h, w)
        coefficients = along_w.transpose(1, 2).reshape(-1, h) @ t_h_t            # (B·C·W, H): [.., v, u]
        # Σ over the chunk's rows of the squared coefficients, squared in place (no extra temporary);
        # each chunk's float32 partial sum (≤ 2048 terms) is added to the float64 total
        torch.sum(coefficients.square_().reshape(rows, w, h), dim=0, out=per_chunk)
        total += per_chunk.T
    return total / (n * c)


def high_frequency_mask(height: int, width: int, ratio: float, strict: bool = True, device=None) -> torch.Tensor:
    """(H, W) bool: ``u + v > ratio · (H + W − 2)`` (``>=`` when ``strict`` is False)."""
    require(0.0 < ratio < 1.0, f"sec: ratio must be in (0, 1), got {ratio}")
    u = torch.arange(height, device=device)[:, None]
    v = torch.arange(width, device=device)[None, :]
    threshold = ratio * (height + width - 2)
    return (u + v > threshold) if strict else (u + v >= threshold)


def spectral_energy_concentration(latents: torch.Tensor, ratios=(0.25, 0.5, 0.75), ratio: float = 0.5,
                                  strict: bool = True, batch_size: int = 256) -> dict:
    """Spectral Energy Concentration (SEC): the share of DCT energy at high frequencies.

    ``E(u, v)`` is the mean over images and channels of the squared orthonormal 2-D DCT-II
    coefficients; ``SEC_r = Σ_{u+v > r·(H+W−2)} E(u, v) / Σ E(u, v)``. The DC term stays in the
    low band (docs/metrics.md §4).

    Parameters
    ----------
    latents : torch.Tensor, shape (N, C, H, W)
        Normalised latents (per-channel standardisation gives every channel the same weight).
    ratios : sequence of float, default (0.25, 0.5, 0.75)
        Thresholds of the reported sweep.
    ratio : float, default 0.5
        The headline threshold (always computed).
    strict : bool, default True
        ``>`` (120 of the 256 coefficients of a 16×16 grid are "high" at r = 0.5) or ``>=``.
    batch_size : int, default 256

    Returns
    -------
    dict
        ``value`` (float at ``ratio``, lower is better: smoother latents), ``sweep`` ({r: value})
        and ``energy`` (torch.Tensor (H, W) float64).

    Examples
    --------
    A constant latent has only DC energy; a checkerboard has almost all of it at high frequencies.

    >>> import torch
    >>> from diffusability.metrics import spectral_energy_concentration
    >>> spectral_energy_concentration(torch.ones(2, 3, 4, 4))["value"]
    0.0
    >>> grid = torch.arange(4)[:, None] + torch.arange(4)[None, :]
    >>> checkerboard = (grid % 2 * 2 - 1).float().expand(2, 3, 4, 4)
    >>> round(spectral_energy_concentration(checkerboard)["value"], 4)
    0.9786
    """
    latents = as_latent_tensor(latents)
    _, _, h, w = latents.shape
    require(h + w > 2, f"sec: latent grid {h}x{w} has only the DC coefficient")
    energy = dct_energy(latents, batch_size)
    total = float(energy.sum())
    require(total > 0, "latents: all values are zero, spectral energy is undefined")
    sweep = {}
    for r in sorted(set(float(x) for x in ratios) | {float(ratio)}):
        mask = high_frequency_mask(h, w, r, strict, energy.device)
        sweep[r] = float(energy[mask].sum()) / total
    return {"value": sweep[float(ratio)], "sweep": sweep, "energy": energy}
