"""Improved precision/recall against a brute-force loop and closed-form configurations."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from diffusability.errors import DiffusabilityError
from diffusability.evaluation.manifold_precision_recall import manifold_radii, precision_recall


def brute_force(real, fake, k):
    def radii(points):
        return [sorted(np.linalg.norm(points - p, axis=1))[k] for p in points]

    def inside(points, centres, r):
        return np.mean([any(np.linalg.norm(p - c) <= rc for c, rc in zip(centres, r)) for p in points])

    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 4), shift=st.integers(0, 4))
def test_matches_brute_force(seed, k, shift):
    # Integer coordinates make every squared distance exact in both formulas, so points exactly on
    # a ball's boundary (frequent here) are decided identically: inside, as "≤ radius" says.
    rng = np.random.default_rng(seed)
    real = rng.integers(-4, 5, (30, 4)).astype(float)
    fake = rng.integers(-6, 7, (25, 4)).astype(float) + shift
    ours = precision_recall(real, fake, k=k, block=7)  # small blocks exercise the blocking
    assert ours == pytest.approx(brute_force(real, fake, k), abs=1e-12)


def test_identical_sets_and_far_apart_sets():
    rng = np.random.default_rng(0)
    real = rng.standard_normal((50, 3))
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)


def test_mode_collapse_has_precision_but_no_recall():
    # All fakes sit on one real point: inside the real manifold, but their own radius is 0.
    rng = np.random.default_rng(1)
    real = rng.standard_normal((40, 2))
    fake = np.repeat(real[:1], 10, axis=0)
    precision, recall = precision_recall(real, fake)
    assert precision == 1.0 and recall == pytest.approx(1 / 40)


def test_radii_of_points_on_a_line():
    points = np.arange(6, dtype=float)[:, None] ** 2  # 0, 1, 4, 9, 16, 25
    np.testing.assert_allclose(manifold_radii(points, k=1), [1, 1, 3, 5, 7, 9])


def test_rejects_too_few_points():
    with pytest.raises(DiffusabilityError, match="more than 3 points"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
