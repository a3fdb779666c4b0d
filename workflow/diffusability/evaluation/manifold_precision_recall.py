"""Improved precision and recall (Kynkäänniemi et al. 2019), as in the ADM evaluator (k = 3).

Each set's manifold is the union of balls around its points, the radius of a point being the
distance to its k-th nearest neighbour within the same set (the point itself not counted).
    precision = fraction of generated points inside the real manifold   (fidelity)
    recall    = fraction of real points inside the generated manifold   (coverage)
Distances are Euclidean in feature space (Inception pool3, or the domain network's features),
computed in float64 blocks so memory stays bounded for 50 k × 10 k sets.
"""

from __future__ import annotations

import numpy as np

from ..errors import require


def _as_features(value, name: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    array = np.asarray(value, dtype=np.float64)
    require(array.ndim == 2, f"{name}: expected (N, F) features, got shape {array.shape}")
    require(bool(np.isfinite(array).all()), f"{name}: contains NaN or Inf")
    return array


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)) via ‖a‖² + ‖b‖² − 2ab, clamped at 0 against rounding."""
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(squared, 0.0))


def manifold_radii(features: np.ndarray, k: int = 3, block: int = 4096) -> np.ndarray:
    """Distance of every point to its k-th nearest other point in the same set: (N, F) → (N,)."""
    n = len(features)
    radii = np.empty(n)
    for start in range(0, n, block):
        distances = _pairwise_distances(features[start:start + block], features)
        # Column k of the sorted row is the k-th neighbour: column 0 is the point itself (distance 0).
        radii[start:start + block] = np.partition(distances, k, axis=1)[:, k]
    return radii


def _fraction_inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, block: int) -> float:
    inside = np.zeros(len(points), dtype=bool)
    for start in range(0, len(points), block):
        distances = _pairwise_distances(points[start:start + block], centres)
        inside[start:start + block] = (distances <= radii[None, :]).any(axis=1)
    return float(inside.mean())


def precision_recall(real_features, fake_features, k: int = 3, block: int = 4096) -> tuple[float, float]:
    """(precision, recall) of generated features against real features.

    Args:
        real_features: (N_r, F); fake_features: (N_f, F); both need more than k rows.
        k: neighbourhood size of the manifold radii (ADM: 3).
    """
    real = _as_features(real_features, "real_features")
    fake = _as_features(fake_features, "fake_features")
    require(real.shape[1] == fake.shape[1], f"feature dimensions differ: {real.shape[1]} vs {fake.shape[1]}")
    require(isinstance(k, (int, np.integer)) and k >= 1, f"k={k!r}: expected an integer >= 1")
    require(len(real) > k and len(fake) > k,
            f"precision/recall with k={k} needs more than {k} points per set, got {len(real)} real, {len(fake)} fake")
    real_radii, fake_radii = manifold_radii(real, k, block), manifold_radii(fake, k, block)
    return _fraction_inside(fake, real, real_radii, block), _fraction_inside(real, fake, fake_radii, block)
