"""Fréchet distance and feature statistics against closed forms and the ADM (scipy sqrtm) formula."""

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings, strategies as st

from diffusability.errors import DiffusabilityError
from diffusability.metrics.frechet import feature_statistics, frechet_distance


def adm_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """The ADM evaluator's formula, written out with scipy's non-symmetric sqrtm."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def random_spd(rng, dim, rank=None):
    rank = dim + 5 if rank is None else rank
    factor = rng.standard_normal((dim, rank))
    return factor @ factor.T / rank


def test_one_dimensional_gaussians_closed_form():
    # FD of N(m1, s1²) and N(m2, s2²) is (m1 − m2)² + (s1 − s2)².
    value = frechet_distance(np.array([1.5]), np.array([[4.0]]), np.array([-0.5]), np.array([[0.25]]))
    assert value == pytest.approx((1.5 + 0.5) ** 2 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_diagonal_covariances_closed_form():
    rng = np.random.default_rng(0)
    d1, d2 = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    assert frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(expected, rel=1e-10)


def test_commuting_covariances_closed_form():
    # Σ1 = Q D1 Qᵀ and Σ2 = Q D2 Qᵀ commute: tr(Σ1Σ2)^{1/2} = Σ √(d1 d2).
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    d1, d2 = rng.uniform(0.0, 2.0, 12), rng.uniform(0.0, 2.0, 12)
    d1[:3] = 0.0  # singular on purpose: no ε·I needed
    s1, s2 = (q * d1) @ q.T, (q * d2) @ q.T
    mu = rng.standard_normal(12)
    expected = np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    # Zero eigenvalues cost √(machine ε) ≈ 1e-8 of absolute accuracy with any square-root method.
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-6)


def test_exactly_singular_covariance_is_factored():
    # A plain Cholesky cannot factor a covariance with exact zeros on the diagonal; the pivoted one stops at
    # the rank, and the result is the closed form.
    rng = np.random.default_rng(5)
    d1 = np.array([0.0, 0.0, 1.0, 2.0, 0.5])
    d2 = rng.uniform(0.1, 2.0, 5)
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(np.diag(d1))
    expected = np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    assert frechet_distance(np.zeros(5), np.diag(d1), np.zeros(5), np.diag(d2)) == pytest.approx(expected, rel=1e-10)


def test_distance_to_itself_is_zero_and_symmetric():
    rng = np.random.default_rng(2)
    s1, s2 = random_spd(rng, 30), random_spd(rng, 30)
    mu1, mu2 = rng.standard_normal(30), rng.standard_normal(30)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-10)


@settings(max_examples=25, deadline=None)
@given(dim=st.integers(1, 40), seed=st.integers(0, 2**31 - 1), low_rank=st.booleans())
def test_agrees_with_adm_sqrtm_formula(dim, seed, low_rank):
    rng = np.random.default_rng(seed)
    rank = max(1, dim // 2) if low_rank else None
    s1, s2 = random_spd(rng, dim, rank), random_spd(rng, dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    ours = frechet_distance(mu1, s1, mu2, s2)
    reference = adm_frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(reference, rel=1e-6, abs=1e-8)


def test_agrees_with_adm_on_feature_statistics_of_samples():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((400, 64)) @ rng.standard_normal((64, 64))
    b = rng.standard_normal((300, 64)) * 1.3 + 0.2
    (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(adm_frechet_distance(mu1, s1, mu2, s2), rel=1e-6)


def test_feature_statistics_matches_numpy_cov_and_accepts_torch():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 7)).astype(np.float32)
    mu, sigma = feature_statistics(torch.from_numpy(x))
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("features, fragment", [
    (np.zeros((1, 4)), "N ≥ 2"),
    (np.zeros(5), "2-D"),
    (np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN"),
])
def test_feature_statistics_rejects_bad_input(features, fragment):
    with pytest.raises(DiffusabilityError, match=fragment):
        feature_statistics(features)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(DiffusabilityError, match="feature dimensions differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(DiffusabilityError, match="sigma must be"):
        frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))


# --------------------------------------------------------------------------- singular covariances, fast statistics

def relu_features(rng, n, dims, dead, shift=0.0):
    x = np.maximum(rng.standard_normal((n, dims)) @ rng.standard_normal((dims, dims)) / np.sqrt(dims) + shift, 0)
    x[:, :dead] = 0.0                                  # always-zero ReLU features: exact zero rows/columns
    return x


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")   # the reference's sqrtm of a singular product
def test_dead_features_drop_out_exactly():
    """Zero rows/columns of either covariance leave tr(Σ1Σ2)^{1/2} of the other features unchanged."""
    rng = np.random.default_rng(6)
    a, b = relu_features(rng, 300, 40, 6), relu_features(rng, 300, 40, 6, shift=0.1)
    b[:, 6:9] = 0.0                                    # dead in the second set only
    (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
    live = slice(9, None)
    reduced = (frechet_distance(mu1[live], s1[live, live], mu2[live], s2[live, live])
               + float(np.sum((mu1[:9] - mu2[:9]) ** 2) + np.trace(s1[:9, :9]) + np.trace(s2[:9, :9])))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reduced, rel=1e-10)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(adm_frechet_distance(mu1, s1, mu2, s2), rel=1e-6)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")
@pytest.mark.parametrize("n1, n2", [(20, 200), (200, 20), (15, 25)])
def test_fewer_samples_than_features_against_adm(n1, n2):
    # rank-deficient covariances (rank N − 1 < F): the smaller rank sets the size of the eigenvalue problem;
    # the tolerance is the ADM formula's own (its sqrtm of a singular product is accurate to ~√ε·‖Σ‖)
    rng = np.random.default_rng(7)
    mixing = rng.standard_normal((48, 48)) / 7
    a = rng.standard_normal((n1, 48)) @ mixing
    b = rng.standard_normal((n2, 48)) @ mixing + 0.1
    (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-12)
    assert ours == pytest.approx(adm_frechet_distance(mu1, s1, mu2, s2), rel=1e-6)


@pytest.mark.parametrize("f, r1, r2", [(64, 20, 64), (64, 64, 20), (120, 50, 70)])
def test_exactly_low_rank_covariances_to_round_off(f, r1, r2):
    """Σ = A Aᵀ with A (F×r): the truth is Σ √eig(Aᵀ Σ' A) with A the factor of lower rank (a regular r×r
    problem). The pivoted factor stops at the rank, so round-off eigenvalues (~ε·‖Σ‖, whose square roots cost
    clamped-eigh and sqrtm ~1e-8) never enter; whichever side is singular, FD(a, b) = FD(b, a)."""
    from diffusability.metrics.frechet import trace_sqrt_product

    rng = np.random.default_rng(9)
    a1, a2 = rng.standard_normal((f, r1)) / np.sqrt(r1), rng.standard_normal((f, r2)) / np.sqrt(r2)
    s1, s2 = a1 @ a1.T, a2 @ a2.T
    low, other = (a1, s2) if r1 <= r2 else (a2, s1)
    exact = np.sqrt(np.clip(np.linalg.eigvalsh(low.T @ other @ low), 0, None)).sum()
    assert trace_sqrt_product(s1, s2) == pytest.approx(exact, rel=1e-12)
    assert trace_sqrt_product(s2, s1) == pytest.approx(exact, rel=1e-12)


def test_zero_covariances():
    assert frechet_distance(np.ones(3), np.zeros((3, 3)), np.zeros(3), np.zeros((3, 3))) == pytest.approx(3.0)
    value = frechet_distance(np.zeros(2), np.zeros((2, 2)), np.zeros(2), np.diag([4.0, 1.0]))
    assert value == pytest.approx(5.0, rel=1e-12)


def test_feature_statistics_in_blocks_matches_numpy_cov(monkeypatch):
    from diffusability.metrics import frechet

    monkeypatch.setattr(frechet, "STATISTICS_BLOCK_BYTES", 7 * 9 * 8)  # 7 rows: 50 rows in 8 blocks
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((50, 9)) * 3 + 100).astype(np.float32)   # a large mean: centring matters
    mu, sigma = feature_statistics(x)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-13)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-12)
    assert np.array_equal(sigma, sigma.T) and sigma.flags["C_CONTIGUOUS"]
    half = torch.from_numpy(x).to(torch.bfloat16)
    np.testing.assert_allclose(feature_statistics(half)[1], np.cov(half.double().numpy(), rowvar=False),
                               rtol=1e-10, atol=1e-12)


def test_feature_statistics_names_infinities():
    x = np.ones((4, 3))
    x[2, 1] = np.inf
    with pytest.raises(DiffusabilityError, match="1 NaN/Inf"):
        feature_statistics(x)
