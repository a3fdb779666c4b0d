"""Fréchet distance between two Gaussians fitted to feature sets (FID, sFID, rFID, FD of any net).

    FD = ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^{1/2}

The ADM evaluator computes the last term with ``scipy.linalg.sqrtm`` of the non-symmetric product
Σ1Σ2 (a Schur decomposition, slow at 2048 dims and prone to small imaginary parts). Here the
trace is computed exactly from a symmetric eigenvalue problem instead: with Σ1 = R Rᵀ, Σ1Σ2 is
similar to the symmetric PSD matrix Rᵀ Σ2 R, so both have the same eigenvalues λ_i ≥ 0 and
tr (Σ1Σ2)^{1/2} = Σ_i √λ_i. R comes from a *pivoted* Cholesky factorisation (LAPACK ``dpstrf``),
which factors singular PSD matrices too (always-zero ReLU features, fewer samples than features)
at the cost of a plain Cholesky, and stops at the numerical rank r: R is F×r, and the eigenvalue
problem shrinks to r×r. So a singular covariance is no slower than a regular one (it used to fall
back to a full ``eigh``, doubling the time). Rᵀ Σ2 R is one ``dsygst`` (half the multiply-adds of
two matrix products). All arithmetic is float64 (benchmarks/bench_frechet.py).
"""

from __future__ import annotations

import numpy as np

from ..errors import require

#: bytes of float64 work per block of rows in :func:`feature_statistics` (20,000 × 2048 features fit in one)
STATISTICS_BLOCK_BYTES = 2 ** 29


def _as_array(value) -> np.ndarray:
    """Torch tensor or array-like → float32/float64 numpy array on the CPU (float32 is not widened here)."""
    if hasattr(value, "detach"):  # a torch tensor; avoid importing torch here
        value = value.detach().cpu()
        if str(value.dtype) not in ("torch.float32", "torch.float64"):
            value = value.double()
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)
    return array


def _as_float64_array(value, name: str) -> np.ndarray:
    """Torch tensor or array-like → float64 numpy array (detached, on the CPU)."""
    return np.asarray(_as_array(value), dtype=np.float64)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of a feature matrix.

    Parameters
    ----------
    features : torch.Tensor or numpy.ndarray, shape (N, F)
        N ≥ 2 rows, all finite.

    Returns
    -------
    mu : numpy.ndarray, shape (F,), float64
    sigma : numpy.ndarray, shape (F, F), float64
        ``np.cov(features, rowvar=False)`` (normalised by N − 1, as the ADM evaluator does), exactly
        symmetric.

    Notes
    -----
    Blocks of at most :data:`STATISTICS_BLOCK_BYTES` of float64 rows are converted and centred in one pass
    (np.cov makes a float64 copy of all N×F values, then centres it in a second pass) and accumulated, so
    memory stays bounded at any N. numpy computes each ``block.T @ block`` with SYRK (half the multiply-adds
    of a general product) and mirrors it, so σ is exactly symmetric. Few, large blocks: each SYRK call
    rewrites the F×F result, so 4096-row blocks cost ~5 % against one call with two threads. Finiteness is
    read off the mean: a NaN/Inf anywhere makes it non-finite.

    Examples
    --------
    >>> import numpy as np
    >>> from diffusability.metrics import feature_statistics
    >>> mu, sigma = feature_statistics(np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]]))
    >>> mu
    array([2., 2.])
    >>> sigma                                   # divided by N − 1 = 2
    array([[4., 3.],
           [3., 3.]])
    """
    array = _as_array(features)
    require(array.ndim == 2, f"features: expected a 2-D (N, F) matrix, got shape {array.shape}")
    n, f = array.shape
    require(n >= 2, f"features: need at least 2 rows (N ≥ 2) for a covariance, got N={n}")
    mu = array.mean(axis=0, dtype=np.float64)
    if not np.isfinite(mu).all():
        bad = ~np.isfinite(array)
        require(not bad.any(), f"features: contains {int(bad.sum())} NaN/Inf values (shape {array.shape})")
        require(False, f"features: the column sums overflow float64 (shape {array.shape})")
    rows = max(1, STATISTICS_BLOCK_BYTES // (8 * f))
    rows = -(-n // -(-n // rows))                       # equal blocks: ⌈n / ⌈n / rows⌉⌉ rows each
    sigma = np.empty((f, f))
    product = np.empty((f, f)) if n > rows else None
    for start in range(0, n, rows):
        block = np.subtract(array[start:start + rows], mu, dtype=np.float64)
        if start == 0:
            np.matmul(block.T, block, out=sigma)
        else:
            sigma += np.matmul(block.T, block, out=product)
    sigma /= n - 1
    return mu, sigma


def _check_gaussian(mu: np.ndarray, sigma: np.ndarray, name: str) -> None:
    require(mu.ndim == 1, f"{name}: mu must be a vector (F,), got shape {mu.shape}")
    require(sigma.shape == (mu.shape[0], mu.shape[0]),
            f"{name}: sigma must be ({mu.shape[0]}, {mu.shape[0]}) to match mu, got {sigma.shape}")
    require(bool(np.isfinite(mu).all()) and bool(np.isfinite(sigma).all()),
            f"{name}: mu/sigma contain NaN or Inf")


def _pivoted_factor(sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Σ[piv][:, piv] = L Lᵀ by LAPACK ``dpstrf`` (LAPACK's default tolerance F·ε·max diag Σ).

    Returns (L (F, F) lower with the columns beyond the rank zeroed, piv (F,) 0-based, rank r). The part
    dropped beyond the rank is below the round-off of the covariance itself.
    """
    from scipy.linalg import lapack

    factor, piv, rank, info = lapack.dpstrf(sigma, lower=1)
    require(info >= 0, f"pivoted Cholesky failed (LAPACK info {info})")
    factor = np.tril(factor)
    factor[:, rank:] = 0.0
    return factor, piv - 1, int(rank)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (Σ1 Σ2)^{1/2} for symmetric PSD Σ1, Σ2 (F, F).

    Any factor R with Σ1 = R Rᵀ makes Σ1Σ2 = R (Rᵀ Σ2 R) R^{-1} similar to the symmetric PSD matrix
    Rᵀ Σ2 R, and tr (Σ1Σ2)^{1/2} = tr (Σ2Σ1)^{1/2}. Both covariances get a pivoted Cholesky factor
    (:func:`_pivoted_factor`, ~F³/3 each); the one of lower rank r is used, so the eigenvalue problem is
    r×r (the dominant cost, ~4r³/3): fewer samples than features or dead features make it cheaper, never
    dearer. No ε·I is added.
    """
    from scipy.linalg import lapack

    factors = [_pivoted_factor(sigma1), _pivoted_factor(sigma2)]
    (factor, piv, rank), other = min(zip(factors, (sigma2, sigma1)), key=lambda item: item[0][2])
    if rank == 0:
        return 0.0
    permuted = np.asfortranarray(other[np.ix_(piv, piv)])
    inner, info = lapack.dsygst(permuted, factor, itype=2, lower=1, overwrite_a=1)   # Lᵀ Σ L, lower half
    require(info == 0, f"dsygst failed (LAPACK info {info})")
    eigenvalues = np.linalg.eigvalsh(inner[:rank, :rank], UPLO="L")
    # Eigenvalues of a PSD matrix are ≥ 0; rounding can push the smallest slightly below.
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^{1/2}``, the last term from a symmetric eigenvalue
    problem (see the module docstring), all in float64.

    Parameters
    ----------
    mu1, mu2 : array-like, shape (F,)
        Means (numpy or torch).
    sigma1, sigma2 : array-like, shape (F, F)
        Symmetric positive semi-definite covariances (numpy or torch).

    Returns
    -------
    float
        The distance (≥ 0; tiny negative values from rounding are clamped to 0).

    Examples
    --------
    Identical Gaussians are at distance 0; a shift m of the mean adds ‖m‖²; in F dimensions,
    N(0, a²I) and N(0, b²I) are F·(a − b)² apart.

    >>> import numpy as np
    >>> from diffusability.metrics import frechet_distance
    >>> mu, sigma = np.zeros(3), np.eye(3)
    >>> frechet_distance(mu, sigma, mu, sigma)
    0.0
    >>> frechet_distance(mu, sigma, np.array([1.0, 2.0, 2.0]), sigma)        # ‖m‖² = 1 + 4 + 4
    9.0
    >>> frechet_distance(mu, 4.0 * sigma, mu, sigma)                         # 3·(2 − 1)²
    3.0
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
