"""PSNR and SSIM against closed forms and a per-pixel brute-force loop."""

import math

import numpy as np
import pytest
import torch

from diffusability.errors import DiffusabilityError
from diffusability.reconstruction.quality import PSNR_CAP_DB, mean_psnr, psnr_uint8, ssim


def test_psnr_closed_form_and_identical_images():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0] = 10  # every value off by 10 → MSE 100 → 20·log10(255/10)
    values = psnr_uint8(a, b)
    assert values[0] == pytest.approx(20 * math.log10(25.5), rel=1e-12)
    assert values[1] == math.inf
    assert mean_psnr(values) == pytest.approx((20 * math.log10(25.5) + PSNR_CAP_DB) / 2)


def test_psnr_uses_full_range_without_wraparound():
    a = np.full((1, 2, 2, 3), 255, np.uint8)
    b = np.zeros_like(a)  # uint8 subtraction would wrap; MSE must be 255² → 0 dB
    assert psnr_uint8(a, b)[0] == pytest.approx(0.0, abs=1e-12)


def test_psnr_rejects_float_and_mismatched_shapes():
    with pytest.raises(DiffusabilityError, match="uint8"):
        psnr_uint8(np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2, 3)))
    with pytest.raises(DiffusabilityError, match="shape"):
        psnr_uint8(np.zeros((1, 2, 2, 3), np.uint8), np.zeros((1, 3, 2, 3), np.uint8))


def brute_force_ssim(x, y, size=11, sigma=1.5, data_range=1.0):
    """Per-pixel loop over the valid window positions with an explicit 2-D Gaussian window."""
    offsets = np.arange(size) - (size - 1) / 2
    window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma ** 2))
    window /= window.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    channels, height, width = x.shape
    for c in range(channels):
        for i in range(height - size + 1):
            for j in range(width - size + 1):
                px, py = x[c, i:i + size, j:j + size], y[c, i:i + size, j:j + size]
                mx, my = (window * px).sum(), (window * py).sum()
                vx = (window * (px - mx) ** 2).sum()
                vy = (window * (py - my) ** 2).sum()
                cxy = (window * (px - mx) * (py - my)).sum()
                values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_per_pixel_loop():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 3, 14, 13))
    y = np.clip(x + rng.normal(0, 0.15, x.shape), 0, 1)
    ours = ssim(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    for n in range(2):
        expected = brute_force_ssim(x[n].astype(np.float32).astype(np.float64),
                                    y[n].astype(np.float32).astype(np.float64))
        assert float(ours[n]) == pytest.approx(expected, rel=1e-9)


def test_ssim_identity_symmetry_and_range():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.uniform(0, 1, (3, 3, 16, 16))).float()
    y = torch.from_numpy(rng.uniform(0, 1, (3, 3, 16, 16))).float()
    torch.testing.assert_close(ssim(x, x), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(ssim(x, y), ssim(y, x), rtol=0, atol=1e-14)
    assert bool((ssim(x, y) < 0.5).all())  # independent noise images are dissimilar
    assert bool((ssim(x, 1 - x) < 0).all())  # anti-correlated images score below zero


def test_ssim_rejects_small_images():
    with pytest.raises(DiffusabilityError, match="window"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
