"""Latent uniformity (docs/metrics.md §6): the VA-VAE t-SNE density protocol.

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
    """Draw ``n`` latent pixels (C-vectors): a random position of each of ``n`` distinct random images.

    When ``n`` exceeds the number of images, distinct (image, position) pairs are drawn instead.
    The VA-VAE uniformity protocol samples 10,000 of them (docs/metrics.md §6).

    Parameters
    ----------
    latents : torch.Tensor, shape (N, C, H, W)
    n : int, default 10000
        At most N·H·W.
    seed : int or tuple, default 0
        Seed of the draw (names, not the global RNG).

    Returns
    -------
    numpy.ndarray, shape (n, C), float64

    Examples
    --------
    >>> import torch
    >>> from diffusability.metrics import sample_latent_pixels
    >>> sample_latent_pixels(torch.zeros(20, 3, 4, 4), n=5).shape
    (5, 3)
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
    """2-D t-SNE embedding of latent pixels.

    ``backend="sklearn"``: Barnes–Hut with ``init="pca"`` and ``learning_rate="auto"`` (the VA-VAE
    protocol). ``backend="opentsne"``: openTSNE with FFT-accelerated gradients, PCA initialisation
    and its own automatic learning rate — much faster at n = 10,000, but a different optimiser, so
    its statistics compare only with other ``opentsne`` runs.

    Parameters
    ----------
    points : numpy.ndarray, shape (n, C)
        More than ``perplexity + 1`` points, not all identical.
    perplexity : float, default 30.0
    max_iter : int, default 1000
        Iterations, counting the 250 early-exaggeration ones (as sklearn does).
    seed : int, default 42
        ``random_state`` of the embedding.
    backend : {"sklearn", "opentsne"}, default "sklearn"
    n_jobs : int, default 1
        Threads (openTSNE only); never changes the result.

    Returns
    -------
    numpy.ndarray, shape (n, 2), float64

    Examples
    --------
    >>> import numpy as np
    >>> from diffusability.metrics import tsne_embedding
    >>> points = np.random.default_rng(0).normal(size=(40, 4))
    >>> tsne_embedding(points, perplexity=5, max_iter=250).shape
    (40, 2)
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
    """Spread of a Gaussian KDE (Scott's rule) evaluated at the points themselves (no grid).

    With ρ the density at each point: CV = std(ρ) / mean(ρ) (population std; lower is better),
    Gini = Σ (2i − n − 1) ρ_(i) / (n Σ ρ) over ρ sorted ascending, i from 1 (lower is better), and
    normalised entropy = −Σ p log2(p + 1e-10) / log2(n) with p = ρ / Σ ρ (higher is better)
    (docs/metrics.md §6).

    Parameters
    ----------
    points : numpy.ndarray, shape (n, 2)
        A t-SNE embedding; at least 3 finite points.

    Returns
    -------
    dict
        ``cv``, ``gini``, ``entropy`` (floats).

    Examples
    --------
    A regular 5×5 grid is nearly uniform: small CV and Gini, entropy close to 1.

    >>> import numpy as np
    >>> from diffusability.metrics import density_statistics
    >>> grid = np.stack(np.meshgrid(np.arange(5.0), np.arange(5.0)), axis=-1).reshape(-1, 2)
    >>> {key: round(value, 4) for key, value in density_statistics(grid).items()}
    {'cv': 0.1928, 'gini': 0.1044, 'entropy': 0.9942}
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
    """Latent uniformity: the VA-VAE t-SNE density statistics, averaged over pixel subsets.

    Subset r of ``n`` latent pixels is drawn with seed ``(seed, r)`` (:func:`sample_latent_pixels`),
    embedded with :func:`tsne_embedding` (``random_state = seed``) and summarised by
    :func:`density_statistics`; the result is the mean over ``repeats`` subsets
    (docs/metrics.md §6).

    Parameters
    ----------
    latents : torch.Tensor, shape (N, C, H, W)
        Normalised latents.
    n : int, default 10000
        Pixels per subset.
    repeats : int, default 10
        Subsets (the VA-VAE authors average 10).
    seed : int, default 42
    perplexity : float, default 30.0
    max_iter : int, default 1000
    backend : {"sklearn", "opentsne"}, default "sklearn"
    n_jobs : int, default 1

    Returns
    -------
    dict
        ``cv`` (lower is better), ``gini`` (lower is better), ``entropy`` (higher is better), the
        ``per_repeat`` list of those three, and ``n_points``.

    Examples
    --------
    >>> import torch
    >>> from diffusability.metrics import latent_uniformity
    >>> latents = torch.randn(50, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    >>> result = latent_uniformity(latents, n=40, repeats=1, perplexity=5, max_iter=250)
    >>> sorted(result)
    ['cv', 'entropy', 'gini', 'n_points', 'per_repeat']
    >>> 0 < result["entropy"] <= 1
    True
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
