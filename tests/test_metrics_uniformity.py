"""t-SNE density statistics: closed forms, orderings, ranges, sampling."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from diffusability.errors import DiffusabilityError
from diffusability.metrics.uniformity import (density_statistics, density_summary, latent_uniformity,
                                              sample_latent_pixels)


def test_gini_cv_entropy_closed_forms():
    # ρ = (1, 2, 3, 4): sorted ascending, n = 4, Σρ = 10
    stats = density_summary(np.array([3.0, 1.0, 4.0, 2.0]))
    gini = ((2 * 1 - 5) * 1 + (2 * 2 - 5) * 2 + (2 * 3 - 5) * 3 + (2 * 4 - 5) * 4) / (4 * 10)
    assert stats["gini"] == pytest.approx(gini) == pytest.approx(0.25)
    assert stats["cv"] == pytest.approx(np.std([1, 2, 3, 4]) / 2.5)
    p = np.array([1, 2, 3, 4]) / 10
    assert stats["entropy"] == pytest.approx(-(p * np.log2(p + 1e-10)).sum() / 2)
    # a constant density is perfectly uniform
    flat = density_summary(np.full(100, 0.3))
    assert flat["gini"] == pytest.approx(0.0, abs=1e-12)
    assert flat["cv"] == pytest.approx(0.0, abs=1e-12)
    assert flat["entropy"] == pytest.approx(1.0, abs=1e-8)
    # all mass on one of n points: Gini (n-1)/n
    spike = density_summary(np.r_[np.zeros(9), 1.0])
    assert spike["gini"] == pytest.approx(0.9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(1e-6, 1e3), min_size=2, max_size=60))
def test_gini_and_entropy_in_unit_interval(values):
    stats = density_summary(np.array(values))
    assert -1e-12 <= stats["gini"] <= 1.0
    assert -1e-12 <= stats["entropy"] <= 1.0 + 1e-9
    assert stats["cv"] >= 0


def test_kde_is_evaluated_at_the_points():
    from scipy.stats import gaussian_kde

    pts = np.random.default_rng(0).standard_normal((50, 2))
    density = gaussian_kde(pts.T)(pts.T)
    assert density_statistics(pts) == pytest.approx(density_summary(density))


def test_uniform_points_are_more_uniform_than_clusters():
    rng = np.random.default_rng(1)
    uniform = rng.uniform(-1, 1, size=(600, 2))
    # clusters of unequal size and spread: densities at the points vary a lot
    clustered = np.concatenate([rng.normal((-3, -3), 0.05, size=(300, 2)), rng.normal((3, 3), 0.4, size=(200, 2)),
                                rng.uniform(-4, 4, size=(100, 2))])
    u, c = density_statistics(uniform), density_statistics(clustered)
    assert u["cv"] < c["cv"]
    assert u["gini"] < c["gini"]
    assert u["entropy"] > c["entropy"]


def test_sample_latent_pixels_distinct_images_and_values():
    latents = torch.arange(20 * 3 * 2 * 2, dtype=torch.float32).reshape(20, 3, 2, 2)
    points = sample_latent_pixels(latents, n=15, seed=0)
    assert points.shape == (15, 3)
    images = set()
    for row in points:
        index = int(row[0]) // 12  # value = n*12 + c*4 + p
        images.add(index)
        position = int(row[0]) % 12
        np.testing.assert_array_equal(row, latents[index, :, position // 2, position % 2].numpy())
    assert len(images) == 15  # without replacement over images
    many = sample_latent_pixels(latents, n=50, seed=0)  # more than images: distinct pixels
    assert len({tuple(r) for r in many}) == 50
    np.testing.assert_array_equal(sample_latent_pixels(latents, 15, seed=0), points)
    with pytest.raises(DiffusabilityError, match="exceeds"):
        sample_latent_pixels(latents, n=81)


def test_latent_uniformity_composes_the_protocol():
    """Mean over subsets (seed, r) of KDE statistics of a t-SNE with random_state = seed."""
    from diffusability.metrics.uniformity import tsne_embedding

    noise = torch.randn(300, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    result = latent_uniformity(noise, n=150, repeats=2, seed=7, perplexity=10, max_iter=250)
    assert len(result["per_repeat"]) == 2 and result["n_points"] == 150
    manual = [density_statistics(tsne_embedding(sample_latent_pixels(noise, 150, seed=(7, r)), 10, 250, 7))
              for r in range(2)]
    for key in ("cv", "gini", "entropy"):
        assert result[key] == pytest.approx(np.mean([m[key] for m in manual]), rel=1e-9)
        assert 0 <= result[key] <= (1 if key != "cv" else math.inf)
    assert result["per_repeat"][0] != result["per_repeat"][1]  # different subsets


def test_unknown_backend_is_rejected():
    noise = torch.randn(60, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(DiffusabilityError, match="backend must be one of"):
        latent_uniformity(noise, n=50, repeats=1, perplexity=5, max_iter=300, backend="tsnecuda")


def _blobs(per_blob=80, dim=8, seed=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 20, size=(3, dim))
    points = np.concatenate([c + rng.normal(0, 1, size=(per_blob, dim)) for c in centres])
    return points, np.repeat(np.arange(3), per_blob)


@pytest.mark.parametrize("backend", ["sklearn", "opentsne"])
def test_both_backends_keep_separated_clusters_apart(backend):
    """Invariant of any t-SNE: well-separated blobs stay separated (nearest embedded neighbour in the same blob)."""
    if backend == "opentsne":
        pytest.importorskip("openTSNE")
    from diffusability.metrics.uniformity import tsne_embedding

    points, blob = _blobs()
    embedding = tsne_embedding(points, perplexity=15, max_iter=300, seed=0, backend=backend)
    assert embedding.shape == (len(points), 2) and np.isfinite(embedding).all()
    distances = ((embedding[:, None] - embedding[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    assert (blob[distances.argmin(1)] == blob).mean() >= 0.99


def test_opentsne_backend_composes_the_same_protocol_and_is_seeded():
    pytest.importorskip("openTSNE")
    from diffusability.metrics.uniformity import tsne_embedding

    noise = torch.randn(300, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    result = latent_uniformity(noise, n=100, repeats=1, seed=7, perplexity=10, max_iter=260, backend="opentsne")
    manual = [density_statistics(tsne_embedding(sample_latent_pixels(noise, 100, seed=(7, r)), 10, 260, 7,
                                                backend="opentsne")) for r in range(1)]
    for key in ("cv", "gini", "entropy"):
        assert result[key] == pytest.approx(np.mean([m[key] for m in manual]), rel=1e-9)
    with pytest.raises(DiffusabilityError, match="early-exaggeration"):
        tsne_embedding(np.random.default_rng(0).normal(size=(60, 3)), perplexity=5, max_iter=250,
                       backend="opentsne")
