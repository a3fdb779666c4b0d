"""Fréchet distance between two Gaussians fitted to feature sets (FID, sFID, rFID, FD of any net).

    FD = ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^{1/2}

The ADM evaluator computes the last term with ``scipy.linalg.sqrtm`` of the non-symmetric product
Σ1Σ2 (a Schur decomposition, slow at 2048 dims and prone to small imaginary parts). Here the
trace is computed exactly from a symmetric eigenvalue problem instead: with Σ1 = R Rᵀ
(Cholesky, or Σ1^{1/2} when Σ1 is singular), Σ1Σ2 is similar to the symmetric PSD matrix
Rᵀ Σ2 R, so both have the same eigenvalues λ_i ≥ 0 and tr (Σ1Σ2)^{1/2} = Σ_i √λ_i. This holds
for singular Σ1 as well, so no ε·I needs to be added. All arithmetic is float64; at 2048 dims
it is about 8× faster than scipy's sqrtm on this CPU (benchmarks/bench_frechet.py).
"""

from __future__ import annotations

import numpy as np

from ..errors import require


def _as_float64_array(value, name: str) -> np.ndarray:
    """Torch tensor or array-like → float64 numpy array (detached, on the CPU)."""
    if hasattr(value, "detach"):  # a torch tensor; avoid importing torch here
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of a feature matrix.

    Args:
        features: (N, F) torch tensor or numpy array, N ≥ 2, all finite.

    Returns:
        mu (F,) float64 and sigma (F, F) float64, ``sigma = np.cov(features, rowvar=False)``
        (normalised by N − 1, as the ADM evaluator does).
    """
    array = _as_float64_array(features, "features")
    require(array.ndim == 2, f"features: expected a 2-D (N, F) matrix, got shape {array.shape}")
    require(array.shape[0] >= 2, f"features: need at least 2 rows (N ≥ 2) for a covariance, got N={array.shape[0]}")
    require(bool(np.isfinite(array).all()),
            f"features: contains {int((~np.isfinite(array)).sum())} NaN/Inf values (shape {array.shape})")
    mu = array.mean(axis=0)
    centred = array - mu
    sigma = centred.T @ centred / (array.shape[0] - 1)
    # Symmetrise away the rounding asymmetry of the product so eigh sees an exactly symmetric matrix.
    sigma = 0.5 * (sigma + sigma.T)
    return mu, sigma


def _check_gaussian(mu: np.ndarray, sigma: np.ndarray, name: str) -> None:
    require(mu.ndim == 1, f"{name}: mu must be a vector (F,), got shape {mu.shape}")
    require(sigma.shape == (mu.shape[0], mu.shape[0]),
            f"{name}: sigma must be ({mu.shape[0]}, {mu.shape[0]}) to match mu, got {sigma.shape}")
    require(bool(np.isfinite(mu).all()) and bool(np.isfinite(sigma).all()),
            f"{name}: mu/sigma contain NaN or Inf")


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) PSD matrix; tiny negative eigenvalues are clamped to 0."""
    eigenvalues, eigenvectors = np.linalg.eigh(sigma)
    root = np.sqrt(np.clip(eigenvalues, 0.0, None))
    return (eigenvectors * root) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (Σ1 Σ2)^{1/2} for symmetric PSD Σ1, Σ2 (F, F).

    Any factor R with Σ1 = R Rᵀ makes Σ1Σ2 = R (Rᵀ Σ2 R) R^{-1} similar to the symmetric PSD
    matrix Rᵀ Σ2 R, whose eigenvalues come from one ``eigvalsh``. The Cholesky factor is the
    cheap choice; a singular Σ1 (fewer samples than features, constant features) has none, and
    then the symmetric square root Σ1^{1/2} (eigh, tiny negative eigenvalues clamped) is used.
    """
    try:
        factor = np.linalg.cholesky(sigma1)
    except np.linalg.LinAlgError:
        factor = _psd_sqrt(sigma1)
    inner = factor.T @ sigma2 @ factor
    inner = 0.5 * (inner + inner.T)
    eigenvalues = np.linalg.eigvalsh(inner)
    # Eigenvalues of a PSD matrix are ≥ 0; rounding can push the smallest slightly below.
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1, mu2: (F,) means; sigma1, sigma2: (F, F) symmetric PSD covariances (numpy or torch).

    Returns:
        The distance as a Python float (≥ 0 up to rounding; tiny negative values from
        rounding are clamped to 0).
    """
    mu1, sigma1 = _as_float64_array(mu1, "mu1"), _as_float64_array(sigma1, "sigma1")
    mu2, sigma2 = _as_float64_array(mu2, "mu2"), _as_float64_array(sigma2, "sigma2")
    _check_gaussian(mu1, sigma1, "first Gaussian")
    _check_gaussian(mu2, sigma2, "second Gaussian")
    require(mu1.shape == mu2.shape, f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    sigma1 = 0.5 * (sigma1 + sigma1.T)
    sigma2 = 0.5 * (sigma2 + sigma2.T)
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))
    return max(value, 0.0)
