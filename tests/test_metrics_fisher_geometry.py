"""Fisher geometry (docs/fisher-geometry.md): FI/FIR alignment of data and latents, encoder penalties by JVPs.

Every expected value is a closed form computed here independently (matrix inverses, hand-derived
projections, exact sample covariances), never a number the code produced: orthogonal and scaled
isometries, the FI sandwich of a bi-Lipschitz linear map, coordinate projections, affine and quadratic
encoders, a circle as curved data, and the tokenizer-metrics command on a tiny random tokenizer.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from diffusability.errors import DiffusabilityError
from diffusability.metrics import fisher_geometry as fg

SIGMA = torch.logspace(-2, 2, 9, dtype=torch.float64)


def random_orthogonal(n: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def random_covariance(n: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((n, n))
    return a @ a.T / n + 0.05 * np.eye(n)


def trace_fisher(cov: np.ndarray, s: float) -> tuple[float, float]:
    """J(s) = tr (Σ + sI)⁻¹ and −J'(s) = tr (Σ + sI)⁻² of a Gaussian, by a matrix inverse."""
    inverse = np.linalg.inv(cov + s * np.eye(len(cov)))
    return float(np.trace(inverse)), float(np.trace(inverse @ inverse))


def raw_fisher(eigenvalues: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """J(s), −J'(s) from the code's per-dimension curves on the raw axis (v̄ = 1): J = φ·D/s, −J' = ψ·D/s²."""
    out = fg.normalised_curves(torch.as_tensor(eigenvalues), 1.0, torch.as_tensor(s))
    d = out["dim"]
    return out["phi"].numpy() * d / s, out["psi"].numpy() * d / s ** 2


def exact_kronecker_samples(channel_variances, hw=2, per_class=17, n_classes=2, seed=0):
    """(N, C, hw, hw) samples whose per-class sample covariance is exactly diag(d) ⊗ I_P (n − 1 ≥ D).

    The n centred samples of a class are √(n − 1) times orthonormal columns orthogonal to the all-ones
    vector; the flip-flop fit without shrinkage then sits at its fixed point from the first step.
    """
    d = torch.as_tensor(channel_variances, dtype=torch.float64)
    c, p = len(d), hw * hw
    g = torch.Generator().manual_seed(seed)
    blocks, labels = [], []
    for k in range(n_classes):
        design = torch.cat([torch.ones(per_class, 1, dtype=torch.float64),
                            torch.randn(per_class, c * p, generator=g, dtype=torch.float64)], 1)
        q = torch.linalg.qr(design).Q[:, 1:]
        x = (q * (per_class - 1) ** 0.5).reshape(per_class, c, hw, hw) * d.sqrt()[None, :, None, None]
        blocks.append(x + 3.0 * k)
        labels.append(torch.full((per_class,), k))
    return torch.cat(blocks), torch.cat(labels)


def channel_map(samples: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """The same linear map of the channels at every position (a 1×1 convolution)."""
    return torch.einsum("ij,njhw->nihw", torch.as_tensor(matrix, dtype=torch.float64), samples)


def total_variance(samples: torch.Tensor) -> float:
    flat = samples.reshape(samples.shape[0], -1).numpy()
    return float(flat.var(axis=0).mean())


def diagonal_phi_psi(d, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """φ, ψ of class covariances diag(d) ⊗ I_P: (1/C) Σ_k s/(d_k + s) and (1/C) Σ_k s²/(d_k + s)²."""
    d = np.asarray(d, dtype=float)[None]
    s = np.asarray(s, dtype=float)[:, None]
    return (s / (d + s)).mean(1), (s ** 2 / (d + s) ** 2).mean(1)


NO_SHRINK = {"shrinkage": "none", "sigma_min": 1e-2, "sigma_max": 1e2, "sigma_points": 9}
#: curves through the class fit: the whitening's Cholesky floor (1e-6 of the mean eigenvalue) moves the
#: fixed point by ~1e-6 (as in the registry's VIV/FI tests); it moves both spaces alike, so gaps stay exact
FIT_RTOL = 1e-5


# --------------------------------------------------------------------------- alignment: closed forms of the curves

def test_orthogonal_map_leaves_fi_and_fir_unchanged():
    cov = random_covariance(6, 0)
    q = random_orthogonal(6, 1)
    data, latent = np.linalg.eigvalsh(cov), np.linalg.eigvalsh(q @ cov @ q.T)
    v = np.trace(cov) / 6
    out = fg.alignment_from_spectra(torch.as_tensor(data), v, torch.as_tensor(latent), v, SIGMA)
    assert out["fi_gap"] == pytest.approx(0.0, abs=1e-12) and out["fir_gap"] == pytest.approx(0.0, abs=1e-12)
    for i, sigma in enumerate(SIGMA.tolist()):
        j, rate = trace_fisher(cov, sigma * v)          # by a matrix inverse, not from the eigenvalues
        s = sigma * v
        assert float(out["latent"]["phi"][i]) == pytest.approx(s * j / 6, rel=1e-12)
        assert float(out["latent"]["psi"][i]) == pytest.approx(s ** 2 * rate / 6, rel=1e-12)


def test_scaled_isometry_leaves_the_normalised_curves_and_shifts_the_raw_ones_by_log_c2():
    """x → c·Qx: normalised curves identical; on the raw axis J_z(s) = J_x(s/c²)/c², i.e. φ_z(s) = φ_x(s/c²)."""
    d, c = [0.25, 1.0, 4.0], 2.5
    x, labels = exact_kronecker_samples(d)
    z = channel_map(x, c * random_orthogonal(3, 2))
    normalised = fg.fisher_alignment(x, z, labels, **NO_SHRINK)
    assert normalised["fi_gap"] == pytest.approx(0.0, abs=1e-10)
    assert normalised["fir_gap"] == pytest.approx(0.0, abs=1e-10)
    sigma = normalised["sigma"].numpy()
    phi, psi = diagonal_phi_psi(d, sigma * total_variance(x))
    assert normalised["data"]["phi"].numpy() == pytest.approx(phi, rel=FIT_RTOL)
    assert normalised["latent"]["psi"].numpy() == pytest.approx(psi, rel=FIT_RTOL)
    assert normalised["latent"]["total_variance"] == pytest.approx(c ** 2 * total_variance(x), rel=1e-12)

    raw = fg.fisher_alignment(x, z, labels, normalise=False, **NO_SHRINK)
    phi_shifted, psi_shifted = diagonal_phi_psi(d, sigma / c ** 2)
    assert raw["latent"]["phi"].numpy() == pytest.approx(phi_shifted, rel=FIT_RTOL)
    assert raw["latent"]["psi"].numpy() == pytest.approx(psi_shifted, rel=FIT_RTOL)
    assert raw["fi_gap"] > 0.1                              # unnormalised, the scale shows as a gap


def test_bi_lipschitz_linear_map_obeys_the_fi_sandwich():
    """Singular values of A in [m, M]: J_x(s/m²)/M² ≤ J_z(s) ≤ J_x(s/M²)/m²; equality for A = c·Q."""
    n, m, big = 5, 0.5, 3.0
    cov = random_covariance(n, 3)
    singular = np.array([m, 0.8, 1.3, 2.2, big])
    a = random_orthogonal(n, 4) @ np.diag(singular) @ random_orthogonal(n, 5)
    s = np.logspace(-2, 2, 9)
    j_z, _ = raw_fisher(np.linalg.eigvalsh(a @ cov @ a.T), s)
    for i, value in enumerate(s):
        lower = trace_fisher(cov, value / m ** 2)[0] / big ** 2
        upper = trace_fisher(cov, value / big ** 2)[0] / m ** 2
        assert lower * (1 - 1e-12) <= j_z[i] <= upper * (1 + 1e-12)
        assert lower < j_z[i] < upper                       # strict for a non-conformal A
    c = 1.7
    j_iso, _ = raw_fisher(np.linalg.eigvalsh(c ** 2 * cov), s)
    for i, value in enumerate(s):
        assert j_iso[i] == pytest.approx(trace_fisher(cov, value / c ** 2)[0] / c ** 2, rel=1e-12)


def test_coordinate_projection_drops_fi_and_fir_by_the_dropped_terms():
    """z = x without coordinates j ∈ dropped: J falls by Σ 1/(λ_j + s), −J' by Σ 1/(λ_j + s)²."""
    lam = np.array([0.05, 0.3, 1.0, 2.0, 6.0, 11.0])
    dropped = [0, 4]
    kept = [j for j in range(len(lam)) if j not in dropped]
    s = np.logspace(-3, 2, 11)
    j_x, rate_x = raw_fisher(lam, s)
    j_z, rate_z = raw_fisher(lam[kept], s)
    for i, value in enumerate(s):
        assert j_x[i] - j_z[i] == pytest.approx(sum(1 / (lam[j] + value) for j in dropped), rel=1e-10)
        assert rate_x[i] - rate_z[i] == pytest.approx(sum(1 / (lam[j] + value) ** 2 for j in dropped), rel=1e-10)


def test_data_on_a_subspace_small_noise_limits():
    """k of n eigenvalues nonzero: s·J/n → (n − k)/n and −s²J'/n → (n − k)/n as s → 0; after projecting onto
    the subspace both → 0."""
    lam = np.array([0.0, 0.0, 0.0, 0.5, 1.0, 3.0])
    tiny = torch.tensor([1e-9], dtype=torch.float64)
    full = fg.normalised_curves(torch.as_tensor(lam), 1.0, tiny)
    onto = fg.normalised_curves(torch.as_tensor(lam[3:]), 1.0, tiny)
    assert float(full["phi"][0]) == pytest.approx(3 / 6, abs=1e-8)
    assert float(full["psi"][0]) == pytest.approx(3 / 6, abs=1e-8)
    assert float(onto["phi"][0]) == pytest.approx(0.0, abs=1e-8) and float(onto["psi"][0]) == pytest.approx(0.0, abs=1e-8)


def test_channel_projection_gap_through_the_class_fit():
    """Latents = two of three data channels: the gap is the mean |log ratio| of the closed-form curves."""
    d = [0.25, 1.0, 4.0]
    x, labels = exact_kronecker_samples(d)
    z = x[:, 1:]
    out = fg.fisher_alignment(x, z, labels, **NO_SHRINK)
    sigma = out["sigma"].numpy()
    phi_x, psi_x = diagonal_phi_psi(d, sigma * total_variance(x))
    phi_z, psi_z = diagonal_phi_psi(d[1:], sigma * total_variance(z))
    assert out["fi_gap"] == pytest.approx(np.abs(np.log(phi_z / phi_x)).mean(), rel=FIT_RTOL)
    assert out["fir_gap"] == pytest.approx(np.abs(np.log(psi_z / psi_x)).mean(), rel=FIT_RTOL)
    assert (out["data"]["dim"], out["latent"]["dim"]) == (12, 8)


def test_pooling_gap_and_grid_helpers():
    images = torch.arange(2 * 3 * 4 * 6, dtype=torch.float64).reshape(2, 3, 4, 6)
    pooled = fg.pool_to_grid(images, (2, 3))
    assert pooled[1, 2, 1, 2] == images[1, 2, 2:4, 4:6].mean()
    with pytest.raises(DiffusabilityError, match="divide"):
        fg.pool_to_grid(images, 3)
    assert fg.log_ratio_gap(torch.tensor([1.0, math.e]), torch.tensor([math.e, math.e])) == pytest.approx(0.5)
    with pytest.raises(DiffusabilityError, match="positive"):
        fg.log_ratio_gap(torch.tensor([0.0]), torch.tensor([1.0]))
    assert fg.sigma_grid(1e-3, 1e2, 6).numpy() == pytest.approx(np.logspace(-3, 2, 6), rel=1e-12)
    assert fg.total_variance_per_dim(torch.tensor([[1.0, 5.0], [3.0, 1.0]])) == pytest.approx((1 + 4) / 2)


# --------------------------------------------------------------------------- tangent frames and data curvature

def axis_neighbours(anchor: torch.Tensor, lengths) -> torch.Tensor:
    """Neighbours anchor ± ℓ_a·e_a: secants along the first len(lengths) coordinate axes, both signs."""
    n = anchor.numel()
    rows = []
    for a, length in enumerate(lengths):
        e = torch.zeros(n, dtype=torch.float64)
        e[a] = length
        rows += [anchor + e, anchor - e]
    return torch.stack(rows)[None]


def test_tangent_frame_of_axis_secants_and_flat_data():
    anchor = torch.zeros(5, dtype=torch.float64)
    out = fg.tangent_frames(anchor[None], axis_neighbours(anchor, [3.0, 2.0, 0.5]), rank=2)
    assert out["tangents"][0].abs().numpy() == pytest.approx(np.eye(5)[:2], abs=1e-12)   # longest two axes
    assert float(out["step"][0]) == pytest.approx(math.sqrt((9 + 4 + 0.25) / 3), rel=1e-12)
    assert float(out["data_curvature"][0]) == pytest.approx(math.sqrt(0.25 / 13), rel=1e-12)
    flat = fg.tangent_frames(anchor[None], axis_neighbours(anchor, [3.0, 2.0]), rank=2)
    assert float(flat["data_curvature"][0]) == 0.0 and bool(flat["valid"][0])
    duplicate = fg.tangent_frames(anchor[None], torch.stack([anchor, anchor + 1])[None], rank=2)
    assert not bool(duplicate["valid"][0])


def test_data_curvature_of_a_circle_is_tan_half_angle():
    """Anchor R·(1, 0) on a circle, neighbours at ±θ, embedded in R⁶ by a random rotation: tan(θ/2)."""
    radius, theta = 2.0, 0.3
    q = torch.as_tensor(random_orthogonal(6, 6))
    def point(angle):
        return q[:, :2] @ torch.tensor([radius * math.cos(angle), radius * math.sin(angle)], dtype=torch.float64)
    out = fg.tangent_frames(point(0.0)[None], torch.stack([point(theta), point(-theta)])[None], rank=1)
    assert float(out["data_curvature"][0]) == pytest.approx(math.tan(theta / 2), rel=1e-10)
    tangent = q[:, 1]                                                   # d/dθ of the circle at θ = 0
    assert abs(float(out["tangents"][0, 0] @ tangent)) == pytest.approx(1.0, rel=1e-12)


def test_nearest_neighbours_match_a_brute_force_sort():
    features = torch.randn(30, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    anchors = torch.tensor([0, 7, 29])
    got = fg.nearest_neighbours(features, anchors, 5, chunk=2)
    for row, i in zip(got.tolist(), anchors.tolist()):
        distance = ((features - features[i]) ** 2).sum(1).numpy()
        distance[i] = np.inf
        assert row == np.argsort(distance)[:5].tolist()


# --------------------------------------------------------------------------- encoder penalties

def linear_encoder(matrix: np.ndarray, bias: np.ndarray | None = None):
    a = torch.as_tensor(matrix, dtype=torch.float64)
    b = torch.zeros(a.shape[0], dtype=torch.float64) if bias is None else torch.as_tensor(bias, dtype=torch.float64)
    return lambda x: x.reshape(x.shape[0], -1) @ a.T + b


def random_anchors(n: int, k: int, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    anchors = torch.randn(batch, n, generator=g, dtype=torch.float64)
    return anchors, anchors[:, None] + 0.3 * torch.randn(batch, k, n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_orthogonal_and_scaled_isometric_encoders_have_zero_penalties(scale):
    anchors, neighbours = random_anchors(6, 5, 4, 7)
    encoder = linear_encoder(scale * random_orthogonal(6, 8), bias=np.arange(6.0))
    out = fg.encoder_penalties(encoder, anchors, neighbours, rank=3)
    for key in ("compression", "distortion", "curvature"):
        assert out[key].numpy() == pytest.approx(np.zeros(4), abs=1e-12), key
    assert out["mean_gain"].numpy() == pytest.approx(np.full(4, scale ** 2), rel=1e-12)
    assert bool(out["valid"].all())


def test_diagonal_encoder_distortion_and_compression_closed_forms():
    """Tangents e_1..e_r (the longest secants), E = diag(a): G = diag(a²); distortion = CV² of a², compression
    = (1/r) Σ min(1, log⁺(c²/a_i²)/log(1/ε))."""
    gains = np.array([2.0, 1.0, 0.1, 0.003])                # squared: 4, 1, 0.01, 9e-6
    anchor = torch.zeros(6, dtype=torch.float64)
    neighbours = axis_neighbours(anchor, [4.0, 3.0, 2.0, 1.0])
    encoder = linear_encoder(np.diag(np.concatenate([gains, [5.0, 7.0]])))
    epsilon = 1e-4
    out = fg.encoder_penalties(encoder, anchor[None], neighbours, rank=4, collapse_ratio=epsilon)
    g = gains ** 2
    c2 = g.mean()
    assert float(out["distortion"][0]) == pytest.approx(((g / c2 - 1) ** 2).mean(), rel=1e-12)
    expected = np.minimum(1, np.maximum(0, np.log(c2 / g)) / np.log(1 / epsilon)).mean()
    assert float(out["compression"][0]) == pytest.approx(expected, rel=1e-12)
    assert float(out["curvature"][0]) == pytest.approx(0.0, abs=1e-15)        # linear


@pytest.mark.parametrize("dropped", [1, 2, 3])
def test_projection_encoder_compression_is_the_dropped_fraction(dropped):
    """Drop q of r tangent coordinates, keep the rest isometric: compression q/r, distortion q/(r − q)."""
    r = 4
    anchor = torch.zeros(5, dtype=torch.float64)
    neighbours = axis_neighbours(anchor, [4.0, 3.0, 2.0, 1.0])
    keep = np.ones(5)
    keep[:dropped] = 0.0
    out = fg.encoder_penalties(linear_encoder(np.diag(keep)), anchor[None], neighbours, rank=r)
    assert float(out["compression"][0]) == pytest.approx(dropped / r, rel=1e-12)
    assert float(out["distortion"][0]) == pytest.approx(dropped / (r - dropped), rel=1e-12)


def test_encoder_derivatives_of_a_tanh_layer():
    """E(x) = tanh(Wx): J t = (1 − y²)·Wt and E''[t, t] = −2y(1 − y²)·(Wt)² with y = tanh(Wx)."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 3, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, generator=g, dtype=torch.float64)
    t = torch.randn(2, 2, 3, generator=g, dtype=torch.float64)
    first, second = fg.encoder_derivatives(lambda v: torch.tanh(v @ w.T), x, t)
    y = torch.tanh(x @ w.T)[:, None]
    wt = t @ w.T
    torch.testing.assert_close(first, (1 - y ** 2) * wt, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(second, -2 * y * (1 - y ** 2) * wt ** 2, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("x0", [(0.0, 0.0), (0.4, -1.1)])
def test_quadratic_encoder_has_the_known_curvature(x0):
    """E(x) = (x, ½a‖x‖²) ∈ R^{n+1}, tangents e_1, e_2 (secants ±h e_a): J t = (t, a⟨x0, t⟩), E''[t, t] = (0, a).
    Off span{J t_a} the second derivative keeps |a|/√(1 + a²ρ²) (ρ² = x0₁² + x0₂², normal (−a x0₁, −a x0₂, 0…, 1)),
    Σ_a ‖J t_a‖² = 2 + a²ρ², so curvature = (h/2)·√(2a²/(1 + a²ρ²) / (2 + a²ρ²)); at x0 = 0 it is h|a|/2."""
    a, h, n = 1.5, 0.2, 4
    anchor = torch.zeros(n, dtype=torch.float64)
    anchor[:2] = torch.tensor(x0, dtype=torch.float64)
    neighbours = axis_neighbours(anchor, [h, h])

    def encoder(x):
        return torch.cat([x, 0.5 * a * x.square().sum(1, keepdim=True)], 1)

    out = fg.encoder_penalties(encoder, anchor[None], neighbours, rank=2)
    rho2 = x0[0] ** 2 + x0[1] ** 2
    expected = h / 2 * math.sqrt(2 * a ** 2 / (1 + a ** 2 * rho2) / (2 + a ** 2 * rho2))
    assert float(out["curvature"][0]) == pytest.approx(expected, rel=1e-12)
    if rho2 == 0:
        assert float(out["curvature"][0]) == pytest.approx(h * a / 2, rel=1e-12)
    # the secants lie in a plane (flat data); the square root of an eigenvalue round-off (~1e-16) is ~1e-8
    assert float(out["data_curvature"][0]) == pytest.approx(0.0, abs=1e-7)


def test_affine_encoder_has_zero_curvature_on_curved_data():
    anchors, neighbours = random_anchors(5, 6, 3, 9)
    matrix = np.random.default_rng(10).standard_normal((3, 5))       # a compressing, non-isometric map
    out = fg.encoder_penalties(linear_encoder(matrix, bias=np.ones(3)), anchors, neighbours, rank=3)
    assert out["curvature"].numpy() == pytest.approx(np.zeros(3), abs=1e-15)
    assert bool((out["distortion"] > 0).all()) and bool((out["data_curvature"] > 0).all())


def test_summary_skips_invalid_anchors_and_refuses_none():
    per_anchor = {"compression": torch.tensor([0.2, 0.4, 9.0]), "distortion": torch.tensor([1.0, 3.0, 9.0]),
                  "curvature": torch.tensor([0.5, 0.5, math.nan]), "data_curvature": torch.tensor([0.1, 0.3, 9.0]),
                  "valid": torch.tensor([True, True, False])}
    out = fg.summarise_penalties(per_anchor)
    assert (out["compression"], out["distortion"], out["curvature"]) == pytest.approx((0.3, 2.0, 0.5))
    assert (out["n_valid"], out["n_anchors"]) == (2, 3)
    with pytest.raises(DiffusabilityError, match="no anchor"):
        fg.summarise_penalties({**per_anchor, "valid": torch.zeros(3, dtype=torch.bool)})


# --------------------------------------------------------------------------- the tokenizer-metrics command

@pytest.fixture(scope="module")
def tokenizer_stage(tmp_path_factory):
    """A random f2 conv VAE (16 px → 3×8×8), a domain net, a labelled val split, its latents and stats."""
    from diffusability.teacher.domain_net import DomainClassifier
    from diffusability.io import save_tensors, write_json
    from diffusability.tokenizers.factory import build_tokenizer
    from diffusability.tokenizers.spec import TokenizerSpec

    root = tmp_path_factory.mktemp("fisher_geometry")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (14, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(14) % 2
    save_tensors(root / "val.safetensors", {"images": images, "labels": labels})
    torch.manual_seed(0)
    spec = TokenizerSpec(image_size=16, base_channels=8, channel_mult=[1, 2], num_res_blocks=1, latent_channels=3)
    model = build_tokenizer(spec).eval()
    save_tensors(root / "tok" / "model.safetensors", model.state_dict())
    write_json(root / "tok" / "config.json", spec.to_dict())
    net = DomainClassifier(num_classes=2, image_size=16, width=8).eval()
    save_tensors(root / "teacher" / "model.safetensors", net.state_dict())
    write_json(root / "teacher" / "config.json", net.config())
    latents = torch.randn(14, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    mean, std = torch.tensor([0.1, -0.2, 0.3]), torch.tensor([1.0, 2.0, 0.5])
    save_tensors(root / "lat" / "val.safetensors", {"latents": latents})
    save_tensors(root / "lat" / "stats.safetensors", {"mean": mean, "std": std})
    return root, model, images, labels, latents, mean, std


def run_command(root, out, spec):
    from diffusability.cli import main

    return main(["tokenizer-metrics", "--tokenizer", str(root / "tok"), "--data", str(root / "val.safetensors"),
                 "--latents", str(root / "lat"), "--feature-net", str(root / "teacher"), "--spec", json.dumps(spec),
                 "--out", str(out), "--device", "cpu"])


def test_command_rows_equal_the_module_on_the_same_inputs(tokenizer_stage, tmp_path):
    from diffusability.imaging import to_model_input
    from diffusability.io import read_parquet

    root, model, images, labels, latents, mean, std = tokenizer_stage
    params = {"sigma_points": 5, "anchors": 6, "neighbors": 4, "rank": 2}
    out = tmp_path / "rows.parquet"
    assert run_command(root, out, {"enabled": ["fisher_geometry"], "batch_size": 10, "fisher_geometry": params}) == 0
    frame = read_parquet(out)
    scalars = frame.drop_duplicates("metric", keep=False).set_index("metric")
    assert list(scalars.index) == ["fi_gap", "fir_gap", "compression_penalty", "distortion_penalty",
                                   "curvature_penalty", "data_curvature"]
    assert list(scalars["direction"]) == ["lower"] * 5 + ["none"]
    curves = frame[frame.metric.str.endswith("_curve")]
    assert curves.groupby("metric").size().to_dict() == {name: 5 for name in (
        "fi_data_curve", "fir_data_curve", "fi_latent_curve", "fir_latent_curve")}
    assert set(curves["direction"]) == {"none"}

    # the same numbers from the module, on inputs prepared here: 2×2 block means of the pixels (latent grid
    # 8×8) and the stats-normalised latents
    pixels = to_model_input(images)
    pooled = torch.nn.functional.avg_pool2d(pixels, 2)
    normalised = (latents - mean[:, None, None]) / std[:, None, None]
    expected = fg.fisher_alignment(pooled, normalised, torch.as_tensor(labels), sigma_points=5)
    assert scalars.loc["fi_gap", "value"] == pytest.approx(expected["fi_gap"], rel=1e-6)
    assert scalars.loc["fir_gap", "value"] == pytest.approx(expected["fir_gap"], rel=1e-6)
    record = json.loads(scalars.loc["fi_gap", "params"])
    assert record["data_grid"] == [8, 8] and (record["data_dim"], record["latent_dim"]) == (192, 192)

    from diffusability.seeding import seeded_subset

    anchors = seeded_subset(14, 6, "fisher-geometry-anchors", 0)
    flat = pooled.flatten(1).double()
    near = torch.stack([torch.argsort(((flat - flat[i]) ** 2).sum(1))[1:5] for i in anchors.tolist()])

    def encoder(x):
        return (model.encode(x).mode() - mean[:, None, None]) / std[:, None, None]

    with torch.no_grad():
        per_anchor = fg.encoder_penalties(encoder, pixels[anchors], pixels[near], rank=2)
    summary = fg.summarise_penalties(per_anchor)
    for key in ("compression", "distortion", "curvature", "data_curvature"):
        name = key if key == "data_curvature" else f"{key}_penalty"
        assert scalars.loc[name, "value"] == pytest.approx(summary[key], rel=1e-4, abs=1e-9), key
    assert scalars.loc["curvature_penalty", "n"] == summary["n_valid"] == 6
    assert scalars.loc["curvature_penalty", "value"] > 0         # a random conv VAE is not affine


def test_command_without_curves_and_bad_keys(tokenizer_stage, tmp_path, capsys):
    from diffusability.io import read_parquet

    root = tokenizer_stage[0]
    out = tmp_path / "rows.parquet"
    spec = {"enabled": ["fisher_geometry"], "fisher_geometry": {"curves": False, "anchors": 3, "neighbors": 3,
                                                                 "rank": 1, "data_grid": 4}}
    assert run_command(root, out, spec) == 0
    frame = read_parquet(out)
    assert len(frame) == 6 and not frame.metric.str.endswith("_curve").any()
    assert json.loads(frame.params.iloc[0])["data_grid"] == [4, 4]
    assert run_command(root, out, {"enabled": ["fisher_geometry"], "fisher_geometry": {"bogus": 1}}) == 2
    assert "bogus" in capsys.readouterr().err
    assert run_command(root, out, {"enabled": ["fisher_geometry"], "fisher_geometry": {"data_grid": 5}}) == 2
    assert "divide" in capsys.readouterr().err
