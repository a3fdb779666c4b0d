"""Tests for FI/FIR (docs/metrics.md §8): Gaussian closed forms, brute-force grid mixture, exact Gaussian velocity field."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from diffusability.errors import DiffusabilityError
from diffusability.metrics import fisher, kronecker

S_GRID = torch.tensor([0.05, 0.3, 1.0, 3.0])


def test_gaussian_curves_closed_forms_and_identities():
    lam = torch.tensor([[0.01, 0.5, 2.0, 7.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    out = fisher.gaussian_fisher_curves(lam, S_GRID)
    d = lam.shape[1]
    for i, s in enumerate(S_GRID.tolist()):
        # Gaussian posterior variance of z given y = z + √s ε is λs/(λ+s) per dimension.
        torch.testing.assert_close(out["mmse"][:, i], (lam * s / (lam + s)).sum(1))
        torch.testing.assert_close(out["J"][:, i], (1 / (lam + s)).sum(1))
        # FIR is the s-derivative of FI: central finite difference.
        h = 1e-6 * s
        fd = ((1 / (lam + s + h)).sum(1) - (1 / (lam + s - h)).sum(1)) / (2 * h)
        torch.testing.assert_close(out["J_prime"][:, i], fd, rtol=1e-6, atol=0)
        # d mmse/ds = E‖Cov(z|y)‖²_F / s² = Σ (λ/(λ+s))², normalised by D.
        torch.testing.assert_close(out["mmse_rate"][:, i] * d, ((lam / (lam + s)) ** 2).sum(1))
    assert bool(((out["phi"] >= 0) & (out["phi"] <= 1)).all()) and bool((out["psi"] >= 0).all())
    # Isotropic unit variance: φ = s/(1+s).
    torch.testing.assert_close(out["phi"][1], S_GRID.double() / (1 + S_GRID.double()))


def test_kronecker_curves_use_the_product_eigenvalues():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, dtype=torch.float64, generator=gen)
    b = torch.randn(4, 4, dtype=torch.float64, generator=gen)
    sigma_c, sigma_s = a @ a.T + 0.1 * torch.eye(3), b @ b.T + 0.1 * torch.eye(4)
    spectra = kronecker.kronecker_spectra_from_factors(torch.zeros(1, 3, 4, dtype=torch.float64), sigma_c[None],
                                                 sigma_s[None], (3, 2, 2))
    kron = torch.kron(sigma_s, sigma_c)
    out = fisher.kronecker_fisher_curves(spectra, S_GRID)
    for i, s in enumerate(S_GRID.tolist()):
        precision = torch.linalg.inv(kron + s * torch.eye(12, dtype=torch.float64))
        assert float(out["J"][0, i]) == pytest.approx(float(torch.trace(precision)), rel=1e-10)
        assert float(out["J_prime"][0, i]) == pytest.approx(-float((precision @ precision).trace()), rel=1e-10)


def test_mixture_with_one_component_matches_gaussian_closed_form():
    lam = torch.tensor([0.3, 2.0], dtype=torch.float64)
    spectra = kronecker.kronecker_spectra_from_factors(torch.ones(1, 2, 1, dtype=torch.float64), torch.diag(lam)[None],
                                                 torch.ones(1, 1, 1, dtype=torch.float64), (2, 1, 1))
    out = fisher.mixture_fisher_curves(spectra, S_GRID, draws=4000, probes=2)
    closed = fisher.gaussian_fisher_curves(lam, S_GRID)
    assert bool(((out["J"] - closed["J"]).abs() < 4 * out["J_stderr"]).all())
    assert bool(((out["J_prime"] - closed["J_prime"]).abs() < 4 * out["J_prime_stderr"] + 1e-12).all())


def grid_mixture_fisher(pi, mu, var, s):
    """FI of a 1-D Gaussian mixture convolved with N(0, s), by quadrature on a fine grid (brute force)."""
    y = np.linspace(-15, 15, 200_001)
    comps = [p * stats.norm.pdf(y, m, math.sqrt(v + s)) for p, m, v in zip(pi, mu, var)]
    density = sum(comps)
    derivative = sum(-c * (y - m) / (v + s) for c, m, v in zip(comps, mu, var))
    return float(np.trapezoid(derivative ** 2 / density, y))


def test_mixture_one_dimensional_against_grid_quadrature():
    pi, mu, var = [0.4, 0.6], [-2.0, 1.5], [0.3, 0.8]
    spectra = kronecker.kronecker_spectra_from_factors(
        torch.tensor(mu, dtype=torch.float64).reshape(2, 1, 1), torch.tensor(var, dtype=torch.float64).reshape(2, 1, 1),
        torch.ones(2, 1, 1, dtype=torch.float64), (1, 1, 1), counts=torch.tensor([4, 6]))
    s_grid = torch.tensor([0.1, 1.0])
    out = fisher.mixture_fisher_curves(spectra, s_grid, draws=20000, probes=1)
    for i, s in enumerate(s_grid.tolist()):
        j = grid_mixture_fisher(pi, mu, var, s)
        h = 1e-3 * s
        j_prime = (grid_mixture_fisher(pi, mu, var, s + h) - grid_mixture_fisher(pi, mu, var, s - h)) / (2 * h)
        assert abs(float(out["J"][i]) - j) < 4 * float(out["J_stderr"][i])
        assert abs(float(out["J_prime"][i]) - j_prime) < 4 * float(out["J_prime_stderr"][i])


def exact_gaussian_velocity(class_means: torch.Tensor, lam: torch.Tensor):
    """v*(x_t, t, c) = E[x1 − x0 | x_t] for x1 ~ N(μ_c, diag λ), x0 ~ N(0, I), x_t = (1−t)x0 + t·x1."""
    def velocity(x_t, t, labels):
        mu = class_means[labels]
        tt = t.reshape(-1, *([1] * (x_t.ndim - 1)))
        denominator = tt ** 2 * lam + (1 - tt) ** 2
        return mu + (tt * lam - (1 - tt)) / denominator * (x_t - tt * mu)
    return velocity


def test_model_fisher_with_exact_gaussian_velocity_recovers_closed_form():
    gen = torch.Generator().manual_seed(1)
    lam = torch.tensor([[0.2, 1.0], [3.0, 0.05]], dtype=torch.float64).reshape(1, 2, 2)   # (C=1, H=2, W=2)
    class_means = 2 * torch.randn(3, 1, 2, 2, dtype=torch.float64, generator=gen)
    labels = torch.arange(3).repeat(600)
    latents = class_means[labels] + lam.sqrt() * torch.randn(len(labels), 1, 2, 2, dtype=torch.float64,
                                                            generator=gen)
    out = fisher.model_fisher(exact_gaussian_velocity(class_means, lam), latents, labels, S_GRID, probes=2,
                              generator=torch.Generator().manual_seed(2), batch_size=512)
    closed = fisher.gaussian_fisher_curves(lam.reshape(-1), S_GRID)
    assert bool(((out["J"] - closed["J"]).abs() < 4 * out["J_stderr"]).all())
    assert bool(((out["J_prime"] - closed["J_prime"]).abs() < 4 * out["J_prime_stderr"]).all())
    assert bool(((out["J"] / closed["J"] - 1).abs() < 0.05).all())
    assert bool(((out["J_prime"] / closed["J_prime"] - 1).abs() < 0.05).all())
    torch.testing.assert_close(out["t"], 1 / (1 + S_GRID.double().sqrt()))


@pytest.mark.parametrize("bad", [torch.tensor([0.0, 1.0]), torch.tensor([-1.0]), torch.tensor([]),
                                 torch.tensor([float("inf")])])
def test_bad_noise_grid(bad):
    with pytest.raises(DiffusabilityError, match="s_grid"):
        fisher.gaussian_fisher_curves(torch.ones(3), bad)


def test_bad_model_inputs():
    with pytest.raises(DiffusabilityError, match="latents"):
        fisher.model_fisher(lambda x, t, y: x, torch.full((4, 2), float("nan")), None, S_GRID)
    with pytest.raises(DiffusabilityError, match="labels"):
        fisher.model_fisher(lambda x, t, y: x, torch.zeros(4, 2), torch.zeros(3, dtype=torch.int64), S_GRID)
