"""Tests for the VIV metric (docs/metrics.md §1 and §14): closed forms, brute-force loops, invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy import integrate, stats

from diffusability.errors import DiffusabilityError
from diffusability.metrics import kronecker, viv
from diffusability.metrics._linalg import ledoit_wolf_shrink
from viv_reference import reference_viv_loop


def single_eigenvalue_spectra(lams) -> kronecker.KroneckerSpectra:
    """K classes with one latent dimension each (C = H = W = 1), eigenvalue λ_k."""
    lams = torch.as_tensor(lams, dtype=torch.float64).reshape(-1, 1, 1)
    k = lams.shape[0]
    return kronecker.kronecker_spectra_from_factors(torch.zeros(k, 1, 1, dtype=torch.float64), lams,
                                              torch.ones(k, 1, 1, dtype=torch.float64), (1, 1, 1))


def random_spd(p: int, generator: torch.Generator, floor: float = 0.1) -> torch.Tensor:
    a = torch.randn(p, p, dtype=torch.float64, generator=generator)
    return a @ a.T / p + floor * torch.eye(p, dtype=torch.float64)


def matrix_normal(n: int, sigma_c: torch.Tensor, sigma_s: torch.Tensor, h: int, w: int,
                  generator: torch.Generator, mean: torch.Tensor | None = None) -> torch.Tensor:
    """n draws X = M + A Z Bᵀ with A Aᵀ = Σ_C, B Bᵀ = Σ_S, i.e. vec(X) ~ N(vec M, Σ_S ⊗ Σ_C); (n, C, H, W)."""
    c, p = sigma_c.shape[0], sigma_s.shape[0]
    a, b = torch.linalg.cholesky(sigma_c), torch.linalg.cholesky(sigma_s)
    x = a @ torch.randn(n, c, p, dtype=torch.float64, generator=generator) @ b.T
    if mean is not None:
        x = x + mean
    return x.reshape(n, c, h, w)


# ------------------------------------------------------------------------------------------ eq. (4), (5)

@pytest.mark.parametrize("lam", [0.01, 0.25, 1.0, 4.0, 100.0])
def test_uniform_closed_form_equals_numeric_integral_of_eq4(lam):
    spectra = single_eigenvalue_spectra([lam])
    integral, _ = integrate.quad(lambda t: lam / (t * t * lam + (1 - t) ** 2), 0, 1, epsabs=1e-13, epsrel=1e-12,
                                 limit=200)
    assert float(viv.viv_uniform(spectra)[0]) == pytest.approx(integral, rel=1e-9)
    assert float(viv.viv_uniform(spectra)[0]) == pytest.approx(math.pi / 2 * math.sqrt(lam), rel=1e-12)
    # viv_curve evaluates eq. (4) itself: integrate it numerically too.
    def curve(t: float) -> float:
        return float(viv.viv_curve(spectra, torch.tensor([t], dtype=torch.float64))[0, 0])

    curve_integral, _ = integrate.quad(curve, 0, 1,
                                       points=[1 / (1 + lam)], epsabs=1e-12, epsrel=1e-9, limit=200)
    assert curve_integral == pytest.approx(math.pi / 2 * math.sqrt(lam), rel=1e-7)


def test_curve_limits_and_peak():
    gen = torch.Generator().manual_seed(1)
    spectra = kronecker.kronecker_spectra_from_factors(
        torch.zeros(2, 3, 4, dtype=torch.float64), torch.stack([random_spd(3, gen) for _ in range(2)]),
        torch.stack([random_spd(4, gen) for _ in range(2)]), (3, 2, 2))
    lam = spectra.eigenvalue_products()
    curve = viv.viv_curve(spectra, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(curve[:, 0], lam.sum(1))           # t = 0 → tr Σ_c
    torch.testing.assert_close(curve[:, 1], torch.full((2,), 12.0, dtype=torch.float64))  # t = 1 → D
    # Single dimension peaks at t* = 1/(1+λ) with value 1 + λ.
    one = single_eigenvalue_spectra([0.3])
    assert float(viv.viv_curve(one, torch.tensor([1 / 1.3]))[0, 0]) == pytest.approx(1.3, rel=1e-12)
    # A dead dimension: 0 for t < 1, 1 at t = 1 (x_t then says nothing about the noise).
    dead = single_eigenvalue_spectra([0.0])
    assert viv.viv_curve(dead, torch.tensor([0.0, 0.5, 1.0]))[0].tolist() == [0.0, 0.0, 1.0]


def test_kronecker_trace_identity_against_explicit_kronecker_product():
    gen = torch.Generator().manual_seed(2)
    sigma_c, sigma_s = random_spd(3, gen), random_spd(6, gen)
    spectra = kronecker.kronecker_spectra_from_factors(torch.zeros(1, 3, 6, dtype=torch.float64), sigma_c[None],
                                                 sigma_s[None], (3, 2, 3))
    kron_eigs = torch.linalg.eigvalsh(torch.kron(sigma_s, sigma_c))
    torch.testing.assert_close(torch.sort(spectra.eigenvalue_products()[0]).values, kron_eigs)
    assert float(viv.viv_uniform(spectra)[0]) == pytest.approx(math.pi / 2 * float(kron_eigs.sqrt().sum()),
                                                               rel=1e-10)


# ------------------------------------------------------------------------------------------ §1.3 logit-normal

def logit_normal_by_quadrature(lam: float, mean: float = 0.0, std: float = 1.0) -> float:
    """E g(λ, sigmoid(m + s z)) by adaptive quadrature against the normal density in logit space."""
    def integrand(z):
        t = 1 / (1 + math.exp(-(mean + std * z)))
        return lam / (t * t * lam + (1 - t) ** 2) * stats.norm.pdf(z)
    value, _ = integrate.quad(integrand, -40, 40, points=[0.0], epsabs=0, epsrel=1e-12, limit=400)
    return value


@pytest.mark.parametrize("lam", [1e-6, 1e-4, 1e-2, 1.0, 100.0])
def test_gauss_hermite_logit_normal_matches_adaptive_quadrature(lam):
    spectra = single_eigenvalue_spectra([lam])
    gh64 = float(viv.viv_logit_normal(spectra, nodes=64)[0])
    gh128 = float(viv.viv_logit_normal(spectra, nodes=128)[0])
    assert gh64 == pytest.approx(logit_normal_by_quadrature(lam), rel=1e-8)
    assert gh64 == pytest.approx(gh128, rel=1e-9)


def test_logit_normal_reference_values_and_monte_carlo():
    spectra = single_eigenvalue_spectra([1.0, 0.01])
    values = viv.viv_logit_normal(spectra)
    assert round(float(values[0]), 4) == 1.7413          # docs/metrics.md §1.3
    assert round(float(values[1]), 4) == 0.0808
    gen = torch.Generator().manual_seed(3)
    t = torch.sigmoid(torch.randn(400_000, dtype=torch.float64, generator=gen))
    for lam, value in zip([1.0, 0.01], values.tolist()):
        g = lam / (t ** 2 * lam + (1 - t) ** 2)
        assert abs(float(g.mean()) - value) < 4 * float(g.std()) / math.sqrt(len(t))


def test_logit_normal_shifted_mean_against_quadrature():
    spectra = single_eigenvalue_spectra([0.2])
    for m in (-0.5, 0.5):
        got = float(viv.viv_logit_normal(spectra, mean=m, std=1.0)[0])
        assert got == pytest.approx(logit_normal_by_quadrature(0.2, m, 1.0), rel=1e-8)


@given(st.floats(min_value=1e-4, max_value=1e4))
@settings(max_examples=30, deadline=None)
def test_logit_normal_symmetry(lam):
    values = viv.viv_logit_normal(single_eigenvalue_spectra([lam, 1 / lam]))
    assert float(values[0]) == pytest.approx(lam * float(values[1]), rel=1e-9)


def test_logit_normal_small_lambda_is_linear():
    value = float(viv.viv_logit_normal(single_eigenvalue_spectra([1e-6]))[0])
    assert value == pytest.approx((1 + 2 * math.exp(0.5) + math.exp(2)) * 1e-6, rel=2e-3)


def test_gauss_hermite_weights_and_nodes():
    t, w = viv.gauss_hermite_logit_normal(64)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-14)
    assert bool(((t > 0) & (t < 1)).all())
    # E[t] = 1/2 for the symmetric law; E[logit(t)²] = 1.
    assert float(t @ w) == pytest.approx(0.5, abs=1e-14)
    assert float(torch.logit(t).square() @ w) == pytest.approx(1.0, rel=1e-12)


# ------------------------------------------------------------------------------------------ §1.4 flip-flop

def test_ledoit_wolf_matches_sklearn():
    sklearn_cov = pytest.importorskip("sklearn.covariance")
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(40, 7, dtype=torch.float64, generator=gen) @ random_spd(7, gen)
    scatter = x.T @ x
    estimate = scatter / 40
    shrunk, alpha = ledoit_wolf_shrink(estimate, x.square().sum(1).square().sum(), (estimate * scatter).sum(), 40)
    expected_cov, expected_alpha = sklearn_cov.ledoit_wolf(x.numpy(), assume_centered=True)
    assert float(alpha) == pytest.approx(expected_alpha, rel=1e-10)
    np.testing.assert_allclose(shrunk.numpy(), expected_cov, rtol=1e-10)


@pytest.mark.parametrize("shrinkage", ["none", "ledoit_wolf"])
def test_flip_flop_recovers_known_factors(shrinkage):
    gen = torch.Generator().manual_seed(5)
    sigma_c, sigma_s = random_spd(3, gen), random_spd(4, gen)
    x = matrix_normal(3000, sigma_c, sigma_s, 2, 2, gen, mean=torch.randn(3, 4, dtype=torch.float64,
                                                                           generator=gen))
    spectra = kronecker.fit_class_covariances(x, torch.zeros(3000, dtype=torch.int64), shrinkage=shrinkage,
                                        return_factors=True, progress=False, product_dtype=torch.float64)
    assert bool(spectra.converged.all())
    truth = torch.kron(sigma_s, sigma_c)
    estimate = torch.kron(spectra.spatial_factors[0], spectra.channel_factors[0])
    assert float(torch.linalg.norm(estimate - truth) / torch.linalg.norm(truth)) < 0.05
    assert float(torch.trace(spectra.spatial_factors[0])) == pytest.approx(4.0, rel=1e-12)
    true_viv = math.pi / 2 * float(torch.linalg.eigvalsh(truth).sqrt().sum())
    assert float(viv.viv_uniform(spectra)[0]) == pytest.approx(true_viv, rel=0.02)


def test_ledoit_wolf_flip_flop_low_bias_at_50_per_class():
    """§1.4 bias table: at N = 50 flip-flop + LW gets Σσ within a few % (C = 16, P = 64: +1.5 % reported)."""
    gen = torch.Generator().manual_seed(6)
    c, h, w, n, classes = 16, 8, 8, 50, 12
    channel = torch.diag(torch.arange(1, c + 1, dtype=torch.float64) ** -1.0)
    coords = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).reshape(-1, 2)
    spatial = torch.exp(-torch.cdist(coords.double(), coords.double()) / 2.0)
    x = torch.cat([matrix_normal(n, channel, spatial, h, w, gen) for _ in range(classes)])
    labels = torch.arange(classes).repeat_interleave(n)
    truth = float(torch.linalg.eigvalsh(torch.kron(spatial, channel)).clamp_min(0).sqrt().sum())
    lw = viv.viv_uniform(kronecker.fit_class_covariances(x, labels, progress=False)).mean() * 2 / math.pi
    plain = viv.viv_uniform(kronecker.fit_class_covariances(x, labels, shrinkage="none", progress=False)).mean()
    assert abs(float(lw) / truth - 1) < 0.03
    assert float(plain) * 2 / math.pi < truth            # the plain MLE under-estimates Σσ at small N


def brute_force_flip_flop(x: torch.Tensor, shrinkage: str, tol: float = 1e-7, max_iter: int = 100):
    """Per-class flip-flop written from §1.4 with explicit per-sample sums (test reference)."""
    n, c, p = x.shape
    r = x - x.mean(0)
    sigma_c, sigma_s = torch.eye(c, dtype=torch.float64), torch.eye(p, dtype=torch.float64)

    def shift(m):  # the same tiny eigenvalue floor as the implementation
        return m + 1e-6 * torch.trace(m) / m.shape[0] * torch.eye(m.shape[0], dtype=torch.float64)

    def lw(estimate, samples):
        mu = torch.trace(estimate) / estimate.shape[0]
        target = mu * torch.eye(estimate.shape[0], dtype=torch.float64)
        d2 = float((estimate - target).square().sum())
        b2 = sum(float((torch.outer(s, s) - estimate).square().sum()) for s in samples) / len(samples) ** 2
        alpha = min(b2, d2) / d2
        return (1 - alpha) * estimate + alpha * target

    for _ in range(max_iter):
        a_inv = torch.linalg.inv(shift(sigma_s))
        new_c = sum(r[i] @ a_inv @ r[i].T for i in range(n)) / ((n - 1) * p)
        if shrinkage == "ledoit_wolf":
            root = torch.linalg.inv(torch.linalg.cholesky(shift(sigma_s)))
            new_c = lw(new_c, torch.cat([(r[i] @ root.T).T for i in range(n)]))
        b_inv = torch.linalg.inv(shift(new_c))
        new_s = sum(r[i].T @ b_inv @ r[i] for i in range(n)) / ((n - 1) * c)
        if shrinkage == "ledoit_wolf":
            root = torch.linalg.inv(torch.linalg.cholesky(shift(new_c)))
            new_s = lw(new_s, torch.cat([root @ r[i] for i in range(n)]))
        scale = torch.trace(new_s) / p
        new_s, new_c = new_s / scale, new_c * scale
        change = max(float(torch.linalg.norm(new_c - sigma_c) / torch.linalg.norm(new_c)),
                     float(torch.linalg.norm(new_s - sigma_s) / torch.linalg.norm(new_s)))
        sigma_c, sigma_s = new_c, new_s
        if change < tol:
            break
    return sigma_c, sigma_s


@pytest.mark.parametrize("shrinkage", ["none", "ledoit_wolf"])
def test_batched_equals_brute_force_per_class_loop(shrinkage):
    gen = torch.Generator().manual_seed(7)
    counts = [6, 9, 6, 12, 9, 6]                      # unequal counts → several equal-count groups
    x = torch.cat([matrix_normal(m, random_spd(3, gen), random_spd(4, gen), 2, 2, gen) for m in counts])
    labels = torch.cat([torch.full((m,), 10 * k) for k, m in enumerate(counts)])
    perm = torch.randperm(len(labels), generator=gen)
    x, labels = x[perm], labels[perm]
    spectra = kronecker.fit_class_covariances(x, labels, shrinkage=shrinkage, return_factors=True, progress=False,
                                        classes_per_batch=2, product_dtype=torch.float64)
    assert spectra.classes.tolist() == [0, 10, 20, 30, 40, 50]
    assert spectra.counts.tolist() == counts
    for k, label in enumerate(spectra.classes.tolist()):
        sigma_c, sigma_s = brute_force_flip_flop(x[labels == label].reshape(-1, 3, 4), shrinkage)
        torch.testing.assert_close(spectra.channel_factors[k], sigma_c, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(spectra.spatial_factors[k], sigma_s, rtol=1e-9, atol=1e-12)


def test_batched_equals_reference_loop_and_float32_products_agree():
    gen = torch.Generator().manual_seed(8)
    counts = [20, 20, 25, 20]
    x = torch.cat([matrix_normal(m, random_spd(4, gen), random_spd(6, gen), 2, 3, gen) for m in counts])
    labels = torch.arange(4).repeat_interleave(torch.tensor(counts))
    reference = reference_viv_loop(x, labels)
    exact = viv.class_conditional_viv(x, labels, product_dtype=torch.float64, progress=False)
    fast = viv.class_conditional_viv(x.float(), labels, progress=False)
    for law in ("uniform", "logit_normal"):
        torch.testing.assert_close(exact["per_class"][law], reference["per_class"][law], rtol=1e-10, atol=0)
        torch.testing.assert_close(fast["per_class"][law], reference["per_class"][law], rtol=1e-5, atol=0)
    assert exact["viv_uniform"] == pytest.approx(reference["viv_uniform"], rel=1e-10)


def test_class_conditional_result_layout():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(30, 2, 2, 2, generator=gen)
    labels = torch.arange(3).repeat(10)
    out = viv.class_conditional_viv(x, labels, progress=False)
    assert out["n_per_class"].tolist() == [10, 10, 10]
    assert out["dim"] == 8
    for law in ("uniform", "logit_normal"):
        assert out[f"viv_{law}"] == pytest.approx(float(out["per_class"][law].mean()))
        assert out[f"viv_{law}_per_dim"] == pytest.approx(out[f"viv_{law}"] / 8)
    only_uniform = viv.class_conditional_viv(x, labels, time_laws=("uniform",), progress=False)
    assert "viv_logit_normal" not in only_uniform


def test_dead_channel_is_handled():
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(40, 3, 2, 2, dtype=torch.float64, generator=gen)
    x[:, 1] = 0.5                                     # a collapsed channel: zero variance
    labels = torch.arange(2).repeat(20)
    for shrinkage in ("none", "ledoit_wolf"):
        spectra = kronecker.fit_class_covariances(x, labels, shrinkage=shrinkage, progress=False)
        assert bool(torch.isfinite(spectra.channel_eigs).all()) and bool((spectra.channel_eigs >= 0).all())
        assert bool(torch.isfinite(viv.viv_uniform(spectra)).all())
    plain = kronecker.fit_class_covariances(x, labels, shrinkage="none", progress=False)
    assert float(plain.channel_eigs[:, 0].max()) < 1e-5 * float(plain.channel_eigs.max())


@given(st.floats(min_value=0.05, max_value=20.0))
@settings(max_examples=12, deadline=None)
def test_uniform_viv_scales_linearly_with_latent_scale(scale):
    gen = torch.Generator().manual_seed(11)
    x = matrix_normal(24, random_spd(2, gen), random_spd(4, gen), 2, 2, gen)
    labels = torch.arange(2).repeat(12)
    base = viv.class_conditional_viv(x, labels, product_dtype=torch.float64, progress=False)
    scaled = viv.class_conditional_viv(scale * x, labels, product_dtype=torch.float64, progress=False)
    assert scaled["viv_uniform"] == pytest.approx(scale * base["viv_uniform"], rel=1e-7)
    # the logit-normal average is not homogeneous of degree 1, but it is eq. (4) averaged over the
    # 64-node rule at eigenvalues scaled by scale² (a fixed margin from homogeneity, as this test used
    # to assert, fails near scale = 0.5 where the two differ by only 0.5 %)
    t, weights = viv.gauss_hermite_logit_normal(64)
    expected = viv.irreducible_variance(base["spectra"].eigenvalue_products() * scale ** 2, t) @ weights
    np.testing.assert_allclose(scaled["per_class"]["logit_normal"].numpy(), expected.numpy(), rtol=1e-7)


# ------------------------------------------------------------------------------------------ bad inputs

@pytest.mark.parametrize("case, pattern", [
    ("nan", "class 1"), ("singleton", "fewer than min_per_class"), ("constant", "all-constant"),
    ("shape", "4-D"), ("labels_len", "labels"), ("float_labels", "integer"), ("shrinkage", "shrinkage"),
])
def test_bad_inputs_raise_clear_errors(case, pattern):
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(12, 2, 2, 2, generator=gen)
    labels = torch.arange(3).repeat(4)
    kwargs = {}
    if case == "nan":
        x[4, 0, 1, 1] = float("nan")                  # sample 4 has label 1
    elif case == "singleton":
        labels = labels.clone()
        labels[0] = 7
    elif case == "constant":
        x[labels == 2] = 3.0
    elif case == "shape":
        x = x[:, 0]
    elif case == "labels_len":
        labels = labels[:-1]
    elif case == "float_labels":
        labels = labels.float()
    elif case == "shrinkage":
        kwargs["shrinkage"] = "oas"
    with pytest.raises(DiffusabilityError, match=pattern):
        viv.class_conditional_viv(x, labels, progress=False, **kwargs)


# ------------------------------------------------------------------------------------------ §1.5 marginal

def small_mixture(seed: int = 13) -> kronecker.KroneckerSpectra:
    gen = torch.Generator().manual_seed(seed)
    k, c, p = 3, 2, 2
    return kronecker.kronecker_spectra_from_factors(
        2 * torch.randn(k, c, p, dtype=torch.float64, generator=gen),
        torch.stack([random_spd(c, gen) for _ in range(k)]), torch.stack([random_spd(p, gen) for _ in range(k)]),
        (c, p, 1), counts=torch.tensor([1, 2, 3]))


def test_marginal_endpoints_are_exact():
    spectra = small_mixture()
    pi = spectra.counts.double() / spectra.counts.sum()
    means = spectra.class_means
    within = (pi * torch.einsum("kii->k", spectra.channel_factors) * torch.einsum("kii->k", spectra.spatial_factors))
    between = (pi[:, None, None] * (means - (pi[:, None, None] * means).sum(0)).square()).sum()
    curve = viv.marginal_irreducible_variance(spectra, torch.tensor([0.0, 1.0]), draws=64, top_components=None)
    assert float(curve["value"][0]) == pytest.approx(float(within.sum() + between), rel=1e-10)
    assert float(curve["value"][1]) == pytest.approx(4.0, rel=1e-10)


def test_marginal_exceeds_class_average():
    spectra = small_mixture()
    t = torch.tensor([0.2, 0.5, 0.8])
    pi = spectra.counts.double() / spectra.counts.sum()
    class_average = viv.viv_curve(spectra, t).T @ pi
    curve = viv.marginal_irreducible_variance(spectra, t, draws=3000)
    assert bool((curve["value"] - class_average > -3 * curve["stderr"]).all())
    assert float(curve["value"][0] - class_average[0]) > 5 * float(curve["stderr"][0])


def test_marginal_with_one_component_equals_class_viv():
    gen = torch.Generator().manual_seed(14)
    spectra = kronecker.kronecker_spectra_from_factors(torch.zeros(1, 2, 3, dtype=torch.float64),
                                                 random_spd(2, gen)[None], random_spd(3, gen)[None], (2, 3, 1))
    for law, exact in (("uniform", viv.viv_uniform(spectra)), ("logit_normal", viv.viv_logit_normal(spectra))):
        out = viv.marginal_viv(None, None, spectra=spectra, time_law=law, draws=4000, progress=False)
        # One component: the RB estimate is exact per draw, the only noise is the draw of t.
        assert abs(out["value"] - float(exact[0])) < 4 * out["stderr"]


def test_marginal_one_dimensional_two_components_against_grid_posterior():
    pi, mu, var, t = np.array([0.3, 0.7]), np.array([-1.5, 2.0]), np.array([0.5, 1.2]), 0.6
    spectra = kronecker.kronecker_spectra_from_factors(
        torch.tensor(mu).reshape(2, 1, 1), torch.tensor(var).reshape(2, 1, 1), torch.ones(2, 1, 1,
                                                                                          dtype=torch.float64),
        (1, 1, 1), counts=torch.tensor([3, 7]))
    # Brute force: joint density of (x1, x_t) on a grid; Var(v | x_t) = Var(x1 | x_t)/(1−t)².
    x1 = np.linspace(-9, 10, 3001)
    xt = np.linspace(-9, 10, 3001)
    prior = sum(p * stats.norm.pdf(x1, m, math.sqrt(v)) for p, m, v in zip(pi, mu, var))
    joint = prior[None, :] * stats.norm.pdf(xt[:, None], t * x1[None, :], 1 - t)
    px = joint.sum(1)
    post_mean = (joint * x1).sum(1) / px
    post_var = (joint * x1 ** 2).sum(1) / px - post_mean ** 2
    brute = float((px * post_var).sum() / px.sum()) / (1 - t) ** 2
    curve = viv.marginal_irreducible_variance(spectra, torch.tensor([t]), draws=20000)
    assert abs(float(curve["value"][0]) - brute) < 4 * float(curve["stderr"][0])
    assert float(curve["stderr"][0]) < 0.01


def test_marginal_top_component_preranking_close_to_exact():
    gen = torch.Generator().manual_seed(15)
    k, c, p = 12, 2, 2
    spectra = kronecker.kronecker_spectra_from_factors(
        6 * torch.randn(k, c, p, dtype=torch.float64, generator=gen),
        torch.stack([random_spd(c, gen) for _ in range(k)]), torch.stack([random_spd(p, gen) for _ in range(k)]),
        (c, p, 1))
    exact = viv.marginal_viv(None, None, spectra=spectra, draws=3000, top_components=None, progress=False)
    ranked = viv.marginal_viv(None, None, spectra=spectra, draws=3000, top_components=4, progress=False)
    # Same seed → same draws; well separated components make the truncation nearly lossless.
    assert ranked["value"] == pytest.approx(exact["value"], rel=0.02)


def test_marginal_viv_from_latents_runs_and_is_seeded():
    gen = torch.Generator().manual_seed(16)
    x = torch.randn(40, 2, 2, 1, generator=gen) + 3 * torch.arange(2).repeat(20)[:, None, None, None]
    labels = torch.arange(2).repeat(20)
    a = viv.marginal_viv(x, labels, draws=200, progress=False)
    b = viv.marginal_viv(x, labels, draws=200, progress=False)
    assert a["value"] == b["value"] and a["estimates"].shape == (200,) and a["t_draws"].shape == (200,)
    with pytest.raises(DiffusabilityError, match="time_law"):
        viv.marginal_viv(x, labels, time_law="cosine")


# ------------------------------------------------------------------------------------------ fast paths (issue 19)

def smooth_classes(counts, c, h, w, seed):
    """Spatially correlated classes of different scales (what the Kronecker fit is for)."""
    gen = torch.Generator().manual_seed(seed)
    blocks = []
    for k, m in enumerate(counts):
        x = torch.randn(m, c, h + 2, w + 2, dtype=torch.float64, generator=gen)
        x = torch.nn.functional.avg_pool2d(x, 3, 1) * (1 + k) + 0.2 * torch.randn(m, c, h, w, dtype=torch.float64,
                                                                                  generator=gen)
        blocks.append(x)
    labels = torch.arange(len(counts)).repeat_interleave(torch.tensor(counts))
    return torch.cat(blocks), labels


@pytest.mark.parametrize("c, h, w", [(3, 9, 9), (2, 8, 8)])    # P = 81 (odd split) and 64: the block GEMMs
def test_batched_equals_reference_loop_on_the_block_path(c, h, w, monkeypatch):
    x, labels = smooth_classes([12, 12, 15, 7, 12], c, h, w, seed=20)
    reference = reference_viv_loop(x, labels)
    for kwargs, budget in (({}, None), ({"classes_per_batch": 2}, None), ({}, 1)):   # 1 byte: one class a batch
        if budget is not None:
            monkeypatch.setattr(kronecker, "WORKSPACE_BYTES", budget)
        out = viv.class_conditional_viv(x, labels, progress=False, **kwargs)
        for law in ("uniform", "logit_normal"):
            torch.testing.assert_close(out["per_class"][law], reference["per_class"][law], rtol=1e-10, atol=0)


def test_float32_products_tolerance():
    """The stated tolerance of the float32 product path: 1e-5 relative to the float64 reference loop."""
    x, labels = smooth_classes([20, 20, 20], 3, 8, 8, seed=21)
    reference = reference_viv_loop(x, labels)
    fast = viv.class_conditional_viv(x, labels, product_dtype=torch.float32, progress=False)
    for law in ("uniform", "logit_normal"):
        torch.testing.assert_close(fast["per_class"][law], reference["per_class"][law], rtol=1e-5, atol=0)


def test_workspace_is_bounded_whatever_the_number_of_latents():
    x, labels = smooth_classes([20] * 6, 2, 8, 8, seed=22)
    small_x, small_labels = smooth_classes([4] * 6, 2, 8, 8, seed=22)
    budget = 600_000
    for latents, lab in ((x, labels), (small_x, small_labels)):
        spectra = kronecker.fit_class_covariances(latents, lab, workspace_bytes=budget, progress=False)
        assert spectra.workspace_bytes <= budget
        n = int(spectra.counts[0])
        per_class = kronecker.workspace_bytes_per_class(n, 2, 64)
        # every class slot is counted, P×P stacks included: the batch shrinks as n grows, never the reverse
        assert per_class > 5 * 64 * 64 * 8
    assert kronecker.workspace_bytes_per_class(5, 32, 256) > 5 * 256 * 256 * 8      # the stacks dominate at small n


def test_converged_classes_leave_the_batch_with_their_own_result():
    """Classes stop at different iterations; the slots are compacted in place and results stay attached."""
    x, labels = smooth_classes([10, 10, 10, 10], 2, 4, 4, seed=23)
    x[labels == 2] = 0.5 * torch.randn_like(x[labels == 2])            # isotropic: converges fast
    together = kronecker.fit_class_covariances(x, labels, return_factors=True, progress=False)
    assert len(set(together.iterations.tolist())) > 1
    for k in range(4):
        alone = kronecker.fit_class_covariances(x[labels == k], torch.zeros(10, dtype=torch.int64), return_factors=True,
                                          progress=False)
        torch.testing.assert_close(together.spatial_factors[k], alone.spatial_factors[0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(together.channel_factors[k], alone.channel_factors[0], rtol=1e-12, atol=1e-14)
        assert int(together.iterations[k]) == int(alone.iterations[0])


@pytest.mark.parametrize("mean, nodes", [(0.0, 64), (0.0, 7), (0.4, 64), (-1.0, 5)])
def test_time_average_over_products_equals_the_direct_sum(mean, nodes):
    gen = torch.Generator().manual_seed(24)
    b = torch.rand(5, 3, dtype=torch.float64, generator=gen) ** 4 * 3
    a = torch.rand(5, 40, dtype=torch.float64, generator=gen) ** 6 * 10
    a[0, :4] = 0.0                                    # dead directions contribute exactly 0
    a[1, :3], b[1, 0] = 1e-300, 1e200                 # no overflow of λ + 1/λ or μ·s²
    b[2, 1] = 0.0
    t, weights = viv.gauss_hermite_logit_normal(nodes, mean, 1.0)
    direct = viv.irreducible_variance((b[:, :, None] * a[:, None, :]).reshape(5, -1), t) @ weights
    fast = viv.time_averaged_irreducible_variance(b, a, t, weights, chunk=50)   # several blocks
    torch.testing.assert_close(fast, direct, rtol=1e-13, atol=0)
    with pytest.raises(DiffusabilityError, match="strictly inside"):
        viv.time_averaged_irreducible_variance(b, a, torch.tensor([0.5, 1.0]), torch.tensor([0.5, 0.5]))


def test_block_products_and_in_place_shrinkage_match_their_plain_forms():
    from diffusability.metrics import _linalg

    gen = torch.Generator().manual_seed(25)
    for p in (3, 64, 65):
        lower = torch.randn(2, p, p, dtype=torch.float64, generator=gen).tril()
        right = torch.randn(2, p, 7, dtype=torch.float64, generator=gen)
        out = torch.empty(2, p, 7, dtype=torch.float64)
        torch.testing.assert_close(_linalg.lower_triangular_matmul(lower, right, out=out), lower @ right)
        square = torch.empty(2, p, p, dtype=torch.float64)
        torch.testing.assert_close(_linalg.gram(right, out=square), right @ right.mT)
    x = torch.randn(2, 50, 6, dtype=torch.float64, generator=gen)
    scatter = x.mT @ x
    estimate = scatter / 49
    fourth = x.square().sum(-1).square().sum(-1)
    expected, alpha = ledoit_wolf_shrink(estimate, fourth, (estimate * scatter).sum((-2, -1)), 50)
    shrunk = estimate.clone()
    alpha_ = _linalg.ledoit_wolf_shrink_(shrunk, fourth, estimate.square().sum((-2, -1)), 50, 49.0)
    torch.testing.assert_close(shrunk, expected, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(alpha_, alpha, rtol=1e-13, atol=0)


def test_threads_context_restores_the_count():
    from diffusability.metrics._linalg import single_thread, threads

    before = torch.get_num_threads()
    with single_thread("cpu"):
        assert torch.get_num_threads() == 1
        with threads(before, "cpu"):
            assert torch.get_num_threads() == before
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), single_thread():
        raise RuntimeError("restored on errors too")
    assert torch.get_num_threads() == before
    with threads(1, "meta"):                            # other devices: the CPU thread count is left alone
        assert torch.get_num_threads() == before


def test_batches_in_threads_equal_one_thread_and_raise_in_the_caller():
    """With T torch threads on the CPU, T batches run at once in Python threads (one intra-op thread each)."""
    x, labels = smooth_classes([12] * 5 + [9] * 3, 2, 8, 8, seed=26)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kronecker.fit_class_covariances(x, labels, classes_per_batch=2, progress=False)
        torch.set_num_threads(3)
        three = kronecker.fit_class_covariances(x, labels, classes_per_batch=2, progress=False)
        assert torch.get_num_threads() == 3
        torch.testing.assert_close(three.spatial_eigs, one.spatial_eigs, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(three.channel_eigs, one.channel_eigs, rtol=1e-12, atol=1e-15)
        assert three.iterations.tolist() == one.iterations.tolist()
        x[labels == 6] = 1.0
        with pytest.raises(DiffusabilityError, match=r"class\(es\) \[6\] have all-constant"):
            kronecker.fit_class_covariances(x, labels, classes_per_batch=2, progress=False)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(previous)


def test_curve_equals_eq4_on_the_products():
    gen = torch.Generator().manual_seed(27)
    k, c, p = 4, 3, 10
    b = torch.rand(k, c, dtype=torch.float64, generator=gen) * 2
    a = torch.rand(k, p, dtype=torch.float64, generator=gen) ** 4 * 5
    a[0, :2], b[1, 0] = 0.0, 0.0
    spectra = kronecker.KroneckerSpectra(classes=torch.arange(k), counts=torch.full((k,), 5), channel_eigs=b,
                                   spatial_eigs=a, iterations=torch.ones(k), converged=torch.ones(k, dtype=torch.bool),
                                   latent_shape=(c, 2, 5))
    t = torch.tensor([0.0, 1e-9, 0.05, 0.5, 0.9, 1 - 1e-9, 1.0], dtype=torch.float64)
    torch.testing.assert_close(viv.viv_curve(spectra, t),
                               viv.irreducible_variance(spectra.eigenvalue_products(), t), rtol=1e-13, atol=0)
