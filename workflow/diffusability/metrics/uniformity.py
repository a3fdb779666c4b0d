"""Latent uniformity (METRICS.md §6): the VA-VAE t-SNE density protocol.

Single latent pixels (C-vectors) of random images are embedded in 2-D with t-SNE; a Gaussian KDE
fitted on the embedding is evaluated at the embedded points themselves (no grid), and the spread
of those densities is summarised by CV (lower better), Gini (lower better) and normalised entropy
(higher better). The VA-VAE authors average 10 random subsets.

The embedding backend is a [CHOICE]: ``sklearn`` (Barnes–Hut, the VA-VAE protocol, the default) or
``opentsne`` (openTSNE's FFT-interpolated gradients, much faster at n = 10 000 but a different
optimiser, so its statistics are comparable only with other ``opentsne`` runs). The KDE and the
statistics are the same for both.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DiffusabilityError, require
from ..progress import progress
from ..seeding import numpy_rng
from .normalization import as_latent_tensor

TSNE_BACKENDS = ("sklearn", "opentsne")
#: iterations of t-SNE's early-exaggeration phase; sklearn counts them inside ``max_iter``
EARLY_EXAGGERATION_ITER = 250


def sample_latent_pixels(latents: torch.Tensor, n: int = 10_000, seed: int = 0) -> np.ndarray:
    """``n`` latent pixels (C-vectors) at a random position of each of ``n`` distinct random images.

    When ``n`` exceeds the number of images, distinct (image, position) pairs are drawn instead.

    Args:
        latents: (N, C, H, W).
    Returns:
        (n, C) float64 numpy array.
    """
    latents = as_latent_tensor(latents)
    n_images, c, h, w = latents.shape
    require(n >= 1, f"uniformity: n must be >= 1, got {n}")
    require(n <= n_images * h * w, f"uniformity: n={n} exceeds the {n_images * h * w} latent pixels")
    rng = numpy_rng("uniformity-pixels", seed)
    if n <= n_images:
        images = rng.choice(n_images, size=n, replace=False)
        positions = rng.integers(0, h * w, size=n)
    else:
        flat = rng.choice(n_images * h * w, size=n, replace=False)
        images, positions = flat // (h * w), flat % (h * w)
    images_t = torch.as_tensor(images, device=latents.device)
    rows_t = torch.as_tensor(positions // w, device=latents.device)
    cols_t = torch.as_tensor(positions % w, device=latents.device)
    return latents[images_t, :, rows_t, cols_t].double().cpu().numpy()


def tsne_embedding(points: np.ndarray, perplexity: float = 30.0, max_iter: int = 1000, seed: int = 42,
                   backend: str = "sklearn", n_jobs: int = 1) -> np.ndarray:
    """2-D t-SNE of (n, C) points → (n, 2) float64.

    ``backend="sklearn"``: Barnes-Hut, ``init="pca"``, ``learning_rate="auto"`` (the VA-VAE protocol).
    ``backend="opentsne"``: openTSNE with FFT-accelerated gradients, PCA initialisation and its own
    ``learning_rate="auto"``; ``max_iter`` counts the 250 early-exaggeration iterations as in sklearn.
    ``n_jobs`` (threads) is used by openTSNE only; it never changes the result.
    """
    require(backend in TSNE_BACKENDS, f"uniformity: backend must be one of {TSNE_BACKENDS}, got {backend!r}")
    points = np.asarray(points, dtype=np.float64)
    require(points.ndim == 2, f"uniformity: points must be (n, C), got shape {points.shape}")
    require(points.shape[0] > perplexity + 1,
            f"uniformity: t-SNE needs more than perplexity+1={perplexity + 1} points, got {points.shape[0]}")
    require(bool(np.ptp(points, axis=0).max() > 0), "uniformity: all sampled latent pixels are identical")
    if backend == "opentsne":
        require(max_iter > EARLY_EXAGGERATION_ITER,
                f"uniformity: max_iter must exceed the {EARLY_EXAGGERATION_ITER} early-exaggeration "
                f"iterations for openTSNE, got {max_iter}")
        try:
            import openTSNE
        except ImportError as exc:
            raise DiffusabilityError("uniformity: backend 'opentsne' needs the openTSNE package "
                                     "(pip install openTSNE==1.0.4)") from exc
        tsne = openTSNE.TSNE(n_components=2, perplexity=perplexity, initialization="pca",
                             early_exaggeration_iter=EARLY_EXAGGERATION_ITER,
                             n_iter=max_iter - EARLY_EXAGGERATION_ITER, negative_gradient_method="fft",
                             random_state=seed, n_jobs=n_jobs, verbose=False)
        return np.asarray(tsne.fit(points), dtype=np.float64)
    from sklearn.manifold import TSNE

    tsne = TSNE(n_components=2, perplexity=perplexity, max_iter=max_iter, random_state=seed,
                init="pca", learning_rate="auto")
    return tsne.fit_transform(points)


def density_statistics(points: np.ndarray) -> dict:
    """CV, Gini and normalised entropy of a Gaussian KDE (Scott's rule) evaluated at the points.

    Args:
        points: (n, 2) array (a t-SNE embedding).
    Returns:
        ``dict(cv, gini, entropy)`` with CV = std(ρ, ddof=0)/mean(ρ), Gini = Σ(2i−n−1)ρ_(i)/(nΣρ)
        (ρ ascending, i from 1), entropy = −Σ p log2(p + 1e-10) / log2(n), p = ρ/Σρ.
    """
    from scipy.stats import gaussian_kde

    points = np.asarray(points, dtype=np.float64)
    require(points.ndim == 2 and points.shape[1] == 2, f"uniformity: expected (n, 2) points, got {points.shape}")
    require(points.shape[0] >= 3, f"uniformity: need at least 3 points, got {points.shape[0]}")
    require(bool(np.isfinite(points).all()), "uniformity: points contain NaN or Inf")
    density = gaussian_kde(points.T)(points.T)
    return density_summary(density)


def density_summary(density: np.ndarray) -> dict:
    """CV, Gini and normalised entropy of a positive density vector (n,)."""
    density = np.asarray(density, dtype=np.float64)
    n = density.shape[0]
    total = density.sum()
    require(total > 0, "uniformity: densities sum to zero")
    ordered = np.sort(density)
    ranks = np.arange(1, n + 1)
    p = density / total
    return {
        "cv": float(density.std() / density.mean()),
        "gini": float(((2 * ranks - n - 1) * ordered).sum() / (n * total)),
        "entropy": float(-(p * np.log2(p + 1e-10)).sum() / np.log2(n)),
    }


def latent_uniformity(latents: torch.Tensor, n: int = 10_000, repeats: int = 10, seed: int = 42,
                      perplexity: float = 30.0, max_iter: int = 1000, backend: str = "sklearn",
                      n_jobs: int = 1) -> dict:
    """Mean over ``repeats`` pixel subsets of the t-SNE density statistics.

    Subset r is drawn with seed ``(seed, r)``; t-SNE always uses ``random_state = seed``.
    ``backend``: "sklearn" (default, VA-VAE protocol) or "opentsne" (FFT t-SNE; see the module doc).

    Args:
        latents: (N, C, H, W) normalised latents.
    Returns:
        ``dict(cv, gini, entropy, per_repeat [dict, …], n_points)``.
    """
    latents = as_latent_tensor(latents)
    require(repeats >= 1, f"uniformity: repeats must be >= 1, got {repeats}")
    require(backend in TSNE_BACKENDS, f"uniformity: backend must be one of {TSNE_BACKENDS}, got {backend!r}")
    per_repeat = []
    for repeat in progress(range(repeats), total=repeats, desc="uniformity t-SNE", unit="subset"):
        points = sample_latent_pixels(latents, n, seed=(seed, repeat))
        embedding = tsne_embedding(points, perplexity, max_iter, seed, backend=backend, n_jobs=n_jobs)
        per_repeat.append(density_statistics(embedding))
    means = {key: float(np.mean([r[key] for r in per_repeat])) for key in ("cv", "gini", "entropy")}
    return {**means, "per_repeat": per_repeat, "n_points": n}
