"""SEC against an explicit cosine-formula DCT and scipy.fft.dctn(norm="ortho"); Parseval; white noise."""

import math

import numpy as np
import pytest
import scipy.fft
import torch
from hypothesis import given, settings, strategies as st

from diffusability.errors import DiffusabilityError
from diffusability.metrics.spectral import dct_energy, dct_matrix, spectral_energy_concentration


def cosine_formula_dct(n):
    t = np.zeros((n, n))
    for k in range(n):
        for i in range(n):
            scale = math.sqrt(1 / n) if k == 0 else math.sqrt(2 / n)
            t[k, i] = scale * math.cos(math.pi * (2 * i + 1) * k / (2 * n))
    return t


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_dct_matrix_matches_formula_and_is_orthonormal(n):
    t = dct_matrix(n).numpy()
    np.testing.assert_allclose(t, cosine_formula_dct(n), atol=1e-12)
    np.testing.assert_allclose(t @ t.T, np.eye(n), atol=1e-12)
    x = np.random.default_rng(n).standard_normal(n)
    np.testing.assert_allclose(t @ x, scipy.fft.dct(x, norm="ortho"), atol=1e-12)


def brute_sec(latents, ratio, strict=True):
    z = latents.double().numpy()
    coefficients = scipy.fft.dctn(z, axes=(2, 3), norm="ortho")
    energy = (coefficients ** 2).mean(axis=(0, 1))
    h, w = energy.shape
    thr = ratio * (h + w - 2)
    high = sum(energy[u, v] for u in range(h) for v in range(w) if (u + v > thr if strict else u + v >= thr))
    return high / energy.sum(), energy


def test_sec_matches_scipy_dctn():
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.avg_pool2d(torch.randn(7, 3, 12, 14, generator=g), 3, 1, 1)
    result = spectral_energy_concentration(z, ratios=(0.25, 0.5, 0.75))
    for r in (0.25, 0.5, 0.75):
        expected, energy = brute_sec(z, r)
        assert result["sweep"][r] == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(result["energy"].numpy(), energy, rtol=1e-5, atol=1e-6 * energy.max())
    assert result["value"] == result["sweep"][0.5]
    expected_nonstrict, _ = brute_sec(z, 0.5, strict=False)
    assert spectral_energy_concentration(z, strict=False)["value"] == pytest.approx(expected_nonstrict, rel=1e-6)


@pytest.mark.parametrize("method", ["matmul", "scipy"])
def test_dct_energy_matches_explicit_cosine_matrices(method):
    z = torch.randn(6, 3, 5, 8, generator=torch.Generator().manual_seed(9))
    t_h, t_w = cosine_formula_dct(5), cosine_formula_dct(8)
    coefficients = np.einsum("uh,nchw,vw->ncuv", t_h, z.double().numpy(), t_w)
    expected = (coefficients ** 2).mean(axis=(0, 1))
    np.testing.assert_allclose(dct_energy(z, batch_size=4, method=method).numpy(), expected, rtol=1e-5, atol=1e-7)


def test_parseval_total_energy_is_mean_square():
    z = torch.randn(4, 5, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 + 1
    energy = dct_energy(z)
    assert float(energy.sum()) == pytest.approx(float(z.double().pow(2).mean()) * 256, rel=1e-6)


def test_white_noise_sec_is_120_of_256():
    z = torch.randn(2000, 8, 16, 16, generator=torch.Generator().manual_seed(4))
    assert spectral_energy_concentration(z)["value"] == pytest.approx(120 / 256, abs=0.005)


def test_smooth_latents_have_lower_sec_than_noise():
    noise = torch.randn(50, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    smooth = torch.nn.functional.avg_pool2d(noise, 5, 1, 2)
    assert spectral_energy_concentration(smooth)["value"] < spectral_energy_concentration(noise)["value"]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), ratio=st.floats(0.05, 0.95), h=st.integers(2, 9), w=st.integers(1, 9))
def test_sec_in_unit_interval(seed, ratio, h, w):
    z = torch.randn(3, 2, h, w, generator=torch.Generator().manual_seed(seed)) + seed % 3
    value = spectral_energy_concentration(z, ratios=(ratio,), ratio=ratio)["value"]
    assert 0.0 <= value <= 1.0


def test_refuses_zero_latents_and_bad_ratio():
    with pytest.raises(DiffusabilityError, match="zero"):
        spectral_energy_concentration(torch.zeros(2, 2, 4, 4))
    with pytest.raises(DiffusabilityError, match="ratio"):
        spectral_energy_concentration(torch.randn(2, 2, 4, 4), ratio=1.5)


def test_matmul_and_scipy_paths_agree_on_a_non_square_grid():
    """The two GEMMs (the default, any device) and the batched scipy FFT give the same energy map."""
    from diffusability.metrics.spectral import dct_energy

    z = torch.randn(37, 3, 5, 9, generator=torch.Generator().manual_seed(5)) + 0.5
    by_matmul = dct_energy(z, batch_size=8, method="matmul")
    by_scipy = dct_energy(z, batch_size=8, method="scipy")
    assert by_matmul.shape == (5, 9)
    torch.testing.assert_close(by_matmul, by_scipy, rtol=2e-6, atol=0)
    torch.testing.assert_close(dct_energy(z, batch_size=8), by_matmul, rtol=0, atol=0)   # auto = matmul
