"""Reconstruction metrics of a tokenizer: PSNR on uint8 images and SSIM on [0, 1] floats.

Conventions (docs/models.md §3.4, the recommended single protocol):
- PSNR per image on uint8 RGB, data range 255: 20·log10(255 / √MSE), MSE over all H·W·3 values.
  Identical images have MSE 0 and PSNR = +inf; :func:`mean_psnr` caps each image at
  ``PSNR_CAP_DB`` (100 dB, far above any lossy reconstruction: one wrong level in one
  pixel of a 64×64 image already gives ≈ 94 dB) before averaging, so a table never holds inf.
- SSIM (Wang et al. 2004) with an 11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03,
  population (weighted) local statistics, averaged over the "valid" pixels (those whose window
  lies inside the image) and over channels — the skimage/torchmetrics defaults for Gaussian
  windows. Inputs in [0, 1] with data_range 1 (not 2, the MAETok pitfall).
"""

from __future__ import annotations


import numpy as np

from ..errors import require

PSNR_CAP_DB = 100.0


def psnr_uint8(a, b) -> np.ndarray:
    """Per-image PSNR in dB of two uint8 image batches.

    Args:
        a, b: uint8 (N, H, W, 3) numpy arrays or torch tensors of the same shape.

    Returns:
        float64 (N,): 20·log10(255/√MSE); +inf where the images are identical.
    """
    a, b = _as_numpy(a), _as_numpy(b)
    require(a.dtype == np.uint8 and b.dtype == np.uint8, f"psnr_uint8: expected uint8 images, got {a.dtype} and {b.dtype}")
    require(a.shape == b.shape, f"psnr_uint8: image batches differ in shape: {a.shape} vs {b.shape}")
    require(a.ndim == 4 and a.shape[-1] == 3, f"psnr_uint8: expected (N, H, W, 3), got {a.shape}")
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = (diff * diff).reshape(a.shape[0], -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 20.0 * np.log10(255.0) - 10.0 * np.log10(mse)


def mean_psnr(values, cap_db: float = PSNR_CAP_DB) -> float:
    """Mean of per-image PSNRs, each capped at ``cap_db`` (so identical images count as 100 dB, not inf)."""
    values = np.asarray(values, dtype=np.float64)
    require(values.size > 0, "mean_psnr: no values")
    return float(np.minimum(values, cap_db).mean())


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian (size,), float64; the 2-D window is its outer product."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    weights = np.exp(-(offsets ** 2) / (2.0 * sigma * sigma))
    return weights / weights.sum()


def ssim(a, b, data_range: float = 1.0, window_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03):
    """Per-image structural similarity.

    Args:
        a, b: float torch tensors (N, C, H, W) with values in [0, data_range]; H, W ≥ window_size.
        data_range: dynamic range L of the values (1.0 for [0, 1] images).

    Returns:
        float64 torch tensor (N,): the mean SSIM over channels and valid pixels; 1 for a == b.
    """
    import torch
    import torch.nn.functional as F

    require(isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), "ssim: expected torch tensors")
    require(a.shape == b.shape, f"ssim: image batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    require(a.ndim == 4, f"ssim: expected (N, C, H, W), got {tuple(a.shape)}")
    require(a.is_floating_point() and b.is_floating_point(), f"ssim: expected float tensors, got {a.dtype}, {b.dtype}")
    require(min(a.shape[-2:]) >= window_size,
            f"ssim: images of {tuple(a.shape[-2:])} are smaller than the {window_size}×{window_size} window")
    require(window_size % 2 == 1, f"ssim: window_size must be odd, got {window_size}")
    channels = a.shape[1]
    # float64: the local variances are differences of nearly equal numbers (E[x²] − E[x]²).
    x, y = a.detach().double(), b.detach().double()
    kernel_1d = torch.from_numpy(gaussian_window(window_size, sigma)).to(x.device)
    row = kernel_1d.view(1, 1, 1, -1).expand(channels, 1, 1, window_size)
    col = kernel_1d.view(1, 1, -1, 1).expand(channels, 1, window_size, 1)

    def local_mean(t):  # separable Gaussian filter, "valid" region only
        return F.conv2d(F.conv2d(t, row, groups=channels), col, groups=channels)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x * mu_x
    var_y = local_mean(y * y) - mu_y * mu_y
    cov_xy = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1)


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


__all__ = ["PSNR_CAP_DB", "psnr_uint8", "mean_psnr", "ssim", "gaussian_window"]
