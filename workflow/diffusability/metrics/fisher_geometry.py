"""Fisher geometry of a tokenizer: data-vs-latent FI/FIR alignment and the encoder's geometric penalties.

The quantities are named after Gu, Mardani, Lee, Zou and Lerman, "Understanding Latent Diffusability via
Fisher Geometry" (arXiv 2604.02751): the alignment of the Fisher information (FI) and its rate (FIR)
between data space and latent space, and three penalties of the encoder (dimensional compression,
tangential distortion, curvature injection) plus the data's own curvature. The formulas below are this
project's definitions (docs/fisher-geometry.md writes them out and says why); they are not taken from the
paper's text.

**Alignment** (:func:`fisher_alignment`). Each space is modelled by class Gaussians N(μ_c, Σ_c) fitted as
for VIV (Kronecker Σ_S ⊗ Σ_C, :func:`~diffusability.metrics.kronecker.fit_class_covariances`), eigenvalues
λ_{c,i}, dimension D, and its total variance per dimension v̄ = tr Cov(x) / D. On the normalised noise axis
σ = s / v̄ the per-dimension curves are

    φ(σ) = (1/K) Σ_c (s/D) Σ_i 1/(λ_{c,i} + s),   ψ(σ) = (1/K) Σ_c (s²/D) Σ_i 1/(λ_{c,i} + s)²,   s = σ·v̄,

i.e. s·J(s)/D and −s²·J'(s)/D of :mod:`.fisher`. A global scaling x → a·x multiplies λ, v̄ and s by a²,
so φ(σ), ψ(σ) do not move. The gaps are means over a log-uniform σ grid:
``fi_gap`` = mean |log φ_z(σ) − log φ_x(σ)|, ``fir_gap`` = mean |log ψ_z(σ) − log ψ_x(σ)|.

**Penalties** (:func:`encoder_penalties`) at an anchor image x with k neighbours x_j (secants
v_j = x_j − x): the tangent frame T (r orthonormal rows) spans the top-r right singular vectors of the
secants; the step δ = (mean_j ‖v_j‖²)^{1/2}. With the encoder's tangent images J t_a and second derivatives
E''[t_a, t_a] (forward-over-forward JVPs) and G = (J T)(J T)ᵀ (r × r), c² = tr G / r:

    distortion   = ‖G/c² − I‖²_F / r
    compression  = (1/r) Σ_a min(1, log⁺(c²/g_a) / log(1/ε))            (g_a eigenvalues of G, ε = collapse_ratio)
    curvature    = (δ/2) · (Σ_a ‖P⊥ E''[t_a, t_a]‖² / Σ_a ‖J t_a‖²)^{1/2}  (P⊥: off span{J t_a})
    data curvature = (Σ_{a>r} S_a² / Σ_{a≤r} S_a²)^{1/2}                (S: singular values of the secants)

Pure functions on tensors and a callable encoder; nothing here opens a file.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from diffusability.errors import require
from diffusability.metrics.fisher import gaussian_fisher_curves

#: default normalised noise grid σ = s / v̄: log-uniform from 1e-3 to 1e2 (32 points), the s grid of the fi/fir rows
SIGMA_MIN, SIGMA_MAX, SIGMA_POINTS = 1e-3, 1e2, 32


# --------------------------------------------------------------------------- alignment of FI/FIR curves

def pool_to_grid(images: torch.Tensor, grid: int | Sequence[int]) -> torch.Tensor:
    """Average-pool images to a ``grid`` (one value per non-overlapping block).

    Parameters
    ----------
    images : torch.Tensor
        (N, C, H, W) floating point.
    grid : int or (int, int)
        Output (h, w); H and W must be multiples of h and w (a block average, no interpolation).

    Returns
    -------
    torch.Tensor
        (N, C, h, w), the mean of each (H/h) × (W/w) block.

    Examples
    --------
    >>> import torch
    >>> pool_to_grid(torch.arange(16.).reshape(1, 1, 4, 4), 2)[0, 0]
    tensor([[ 2.5000,  4.5000],
            [10.5000, 12.5000]])
    """
    require(isinstance(images, torch.Tensor) and images.ndim == 4 and images.is_floating_point(),
            "images: expected a floating-point tensor (N, C, H, W)")
    h, w = (int(grid), int(grid)) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    height, width = images.shape[-2:]
    require(h >= 1 and w >= 1 and height % h == 0 and width % w == 0,
            f"grid: {(h, w)} must divide the image size {(height, width)} (block averages only)")
    return F.avg_pool2d(images, kernel_size=(height // h, width // w))


def total_variance_per_dim(samples: torch.Tensor) -> float:
    """v̄ = tr Cov(x) / D: the mean squared deviation from the sample mean, per dimension.

    Parameters
    ----------
    samples : torch.Tensor
        (N, …) with N ≥ 2; each sample is flattened to D numbers.

    Returns
    -------
    float
        (1/(N·D)) Σ_n ‖x_n − x̄‖² (the biased, 1/N, estimate), computed in float64.

    Examples
    --------
    >>> import torch
    >>> total_variance_per_dim(torch.tensor([[0., 2.], [2., 0.]]))
    1.0
    """
    require(isinstance(samples, torch.Tensor) and samples.ndim >= 2 and samples.shape[0] >= 2,
            "samples: expected a tensor (N, …) with N ≥ 2")
    flat = samples.reshape(samples.shape[0], -1).to(torch.float64)
    value = float((flat - flat.mean(0)).square().mean())
    require(value > 0 and math.isfinite(value), "samples: the total variance is zero or not finite")
    return value


def sigma_grid(sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
               sigma_points: int = SIGMA_POINTS) -> torch.Tensor:
    """(sigma_points,) float64 normalised noise levels, log-uniform from ``sigma_min`` to ``sigma_max``.

    Examples
    --------
    >>> sigma_grid(0.01, 1.0, 3)
    tensor([0.0100, 0.1000, 1.0000], dtype=torch.float64)
    """
    require(0 < sigma_min < sigma_max and math.isfinite(sigma_max),
            f"sigma grid: expected 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    require(int(sigma_points) >= 2, f"sigma grid: expected sigma_points ≥ 2, got {sigma_points}")
    return torch.logspace(math.log10(sigma_min), math.log10(sigma_max), int(sigma_points), dtype=torch.float64)


def normalised_curves(eigenvalues: torch.Tensor, total_variance: float, sigma: torch.Tensor) -> dict:
    """Class-averaged per-dimension FI/|FIR| curves φ(σ), ψ(σ) on the normalised axis σ = s / v̄.

    Parameters
    ----------
    eigenvalues : torch.Tensor
        (K, D) or (D,) class-covariance eigenvalues λ ≥ 0.
    total_variance : float
        v̄ of the space (1.0 gives the raw s axis).
    sigma : torch.Tensor
        (S,) normalised noise levels > 0.

    Returns
    -------
    dict
        ``phi``, ``psi`` (S,) float64 — the equal-weight class means of s·J(s)/D and −s²·J'(s)/D at
        s = σ·v̄ —, ``sigma`` (S,), ``s`` (S,), ``dim`` (D) and ``total_variance``.

    Examples
    --------
    >>> import torch
    >>> out = normalised_curves(torch.tensor([[1.0, 1.0]]), 1.0, torch.tensor([1.0]))
    >>> float(out["phi"][0]), float(out["psi"][0])
    (0.5, 0.25)
    """
    require(total_variance > 0 and math.isfinite(total_variance),
            f"total_variance: expected a finite value > 0, got {total_variance}")
    sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
    lam = torch.as_tensor(eigenvalues)
    lam = lam.reshape(1, -1) if lam.ndim == 1 else lam
    curves = gaussian_fisher_curves(lam, (sigma * total_variance).to(lam.device))
    return {"phi": curves["phi"].mean(0).cpu(), "psi": curves["psi"].mean(0).cpu(), "sigma": sigma,
            "s": sigma * total_variance, "dim": int(lam.shape[-1]), "total_variance": float(total_variance)}


def log_ratio_gap(first: torch.Tensor, second: torch.Tensor) -> float:
    """Mean absolute log ratio of two positive curves on the same grid: mean |log a − log b|.

    On a log-uniform grid the mean is the average over log σ, so every decade of noise weighs the same;
    0 means the curves coincide, 0.1 a typical mismatch of about 10 %.

    Examples
    --------
    >>> import torch
    >>> round(log_ratio_gap(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0])), 6)
    0.346574
    """
    a, b = torch.as_tensor(first, dtype=torch.float64), torch.as_tensor(second, dtype=torch.float64)
    require(a.shape == b.shape and a.numel() >= 1, f"curves: expected equal shapes, got {a.shape} and {b.shape}")
    require(bool((a > 0).all()) and bool((b > 0).all()), "curves: expected positive values (log ratio)")
    return float((a.log() - b.log()).abs().mean())


def alignment_from_spectra(data_eigenvalues: torch.Tensor, data_variance: float,
                           latent_eigenvalues: torch.Tensor, latent_variance: float,
                           sigma: torch.Tensor) -> dict:
    """FI/FIR curves of both spaces on the common normalised axis and their gaps.

    Parameters
    ----------
    data_eigenvalues, latent_eigenvalues : torch.Tensor
        (K, n) and (K', d) class-covariance eigenvalues (the dimensions and class counts may differ).
    data_variance, latent_variance : float
        v̄ of each space (pass 1.0 for both to compare on the raw s axis).
    sigma : torch.Tensor
        (S,) normalised noise levels.

    Returns
    -------
    dict
        ``fi_gap``, ``fir_gap`` (float), ``sigma`` (S,), ``data`` and ``latent`` (the dicts of
        :func:`normalised_curves`).

    Examples
    --------
    >>> import torch
    >>> lam = torch.tensor([[0.5, 2.0]])
    >>> out = alignment_from_spectra(lam, 1.25, 9 * lam, 9 * 1.25, torch.tensor([0.1, 1.0]))
    >>> round(out["fi_gap"], 12), round(out["fir_gap"], 12)
    (0.0, 0.0)
    """
    data = normalised_curves(data_eigenvalues, data_variance, sigma)
    latent = normalised_curves(latent_eigenvalues, latent_variance, sigma)
    return {"fi_gap": log_ratio_gap(latent["phi"], data["phi"]),
            "fir_gap": log_ratio_gap(latent["psi"], data["psi"]),
            "sigma": data["sigma"], "data": data, "latent": latent}


def class_gaussian_spectrum(samples: torch.Tensor, labels: torch.Tensor, *, shrinkage: str = "ledoit_wolf",
                            tol: float = 1e-7, max_iter: int = 100, min_per_class: int = 2,
                            progress: bool = False) -> torch.Tensor:
    """(K, C·H·W) eigenvalues of the Kronecker class covariances Σ_S ⊗ Σ_C of (N, C, H, W) samples.

    The fit is the one of VIV and the fi/fir rows (flip-flop with Ledoit–Wolf shrinkage by default).

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(40, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    >>> class_gaussian_spectrum(x, torch.arange(40) % 2).shape
    torch.Size([2, 8])
    """
    from diffusability.metrics.kronecker import fit_class_covariances

    spectra = fit_class_covariances(samples, labels, shrinkage=shrinkage, tol=tol, max_iter=max_iter,
                                    min_per_class=min_per_class, progress=progress)
    return spectra.eigenvalue_products()


def fisher_alignment(data: torch.Tensor, latents: torch.Tensor, labels: torch.Tensor, *,
                     sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, sigma_points: int = SIGMA_POINTS,
                     normalise: bool = True, shrinkage: str = "ledoit_wolf", tol: float = 1e-7,
                     max_iter: int = 100, min_per_class: int = 2, progress: bool = False) -> dict:
    """Alignment of the data's and the latents' class-Gaussian FI/FIR curves.

    Parameters
    ----------
    data : torch.Tensor
        (N, C, H, W) images at the resolution of the comparison (e.g. :func:`pool_to_grid` of the pixels).
    latents : torch.Tensor
        (N, C', h, w) latents of the same N images (as the diffusion model sees them).
    labels : torch.Tensor
        (N,) int class labels (≥ ``min_per_class`` per class).
    sigma_min, sigma_max, sigma_points :
        The log-uniform normalised noise grid σ = s / v̄.
    normalise : bool
        True: σ = s / v̄ with each space's own total variance per dimension; False: σ = s (raw axis).
    shrinkage, tol, max_iter, min_per_class :
        Passed to the class-covariance fit.

    Returns
    -------
    dict
        As :func:`alignment_from_spectra`.

    Examples
    --------
    >>> import torch
    >>> x = torch.randn(40, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    >>> out = fisher_alignment(x, 3 * x, torch.arange(40) % 2, sigma_points=4)
    >>> out["fi_gap"] < 1e-6 and out["fir_gap"] < 1e-6   # equal up to the fit's convergence tolerance
    True
    """
    require(isinstance(data, torch.Tensor) and isinstance(latents, torch.Tensor)
            and data.shape[0] == latents.shape[0],
            "data, latents: expected tensors with one sample per image (the same N)")
    fit = {"shrinkage": shrinkage, "tol": tol, "max_iter": max_iter, "min_per_class": min_per_class,
           "progress": progress}
    data_eigs = class_gaussian_spectrum(data, labels, **fit)
    latent_eigs = class_gaussian_spectrum(latents, labels, **fit)
    data_var = total_variance_per_dim(data) if normalise else 1.0
    latent_var = total_variance_per_dim(latents) if normalise else 1.0
    return alignment_from_spectra(data_eigs, data_var, latent_eigs, latent_var,
                                  sigma_grid(sigma_min, sigma_max, sigma_points))


# --------------------------------------------------------------------------- tangent frames of the data

def nearest_neighbours(features: torch.Tensor, anchors: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Indices of the k Euclidean nearest neighbours of each anchor among all samples (itself excluded).

    Parameters
    ----------
    features : torch.Tensor
        (N, F) sample features (e.g. flattened down-sampled images).
    anchors : torch.Tensor
        (M,) int64 indices into ``features``.
    k : int
        Neighbours per anchor, 1 ≤ k ≤ N − 1.
    chunk : int
        Anchors per distance block (memory only).

    Returns
    -------
    torch.Tensor
        (M, k) int64, nearest first.

    Examples
    --------
    >>> import torch
    >>> nearest_neighbours(torch.tensor([[0.], [1.], [3.], [7.]]), torch.tensor([0, 3]), 2).tolist()
    [[1, 2], [2, 1]]
    """
    require(features.ndim == 2 and 1 <= int(k) <= features.shape[0] - 1,
            f"nearest_neighbours: expected features (N, F) and 1 ≤ k ≤ N − 1, got {tuple(features.shape)}, k={k}")
    anchors = torch.as_tensor(anchors, dtype=torch.int64, device=features.device).reshape(-1)
    feats = features.to(torch.float64)
    out = []
    for start in range(0, anchors.numel(), chunk):
        index = anchors[start:start + chunk]
        distance = torch.cdist(feats[index], feats)
        distance[torch.arange(index.numel(), device=feats.device), index] = math.inf   # never its own neighbour
        out.append(distance.topk(int(k), dim=1, largest=False).indices)
    return torch.cat(out)


def tangent_frames(anchors: torch.Tensor, neighbours: torch.Tensor, rank: int,
                   degenerate_ratio: float = 1e-10) -> dict:
    """Tangent estimate of the data at each anchor: the top-r right singular vectors of its secants.

    Parameters
    ----------
    anchors : torch.Tensor
        (B, *S) anchor points x (e.g. images (B, 3, H, W)).
    neighbours : torch.Tensor
        (B, k, *S) its neighbours x_j; the secants are v_j = x_j − x (not centred: the frame passes
        through the anchor).
    rank : int
        r ≤ k tangent directions.
    degenerate_ratio : float
        An anchor whose r-th squared singular value is below this fraction of the first has fewer than r
        independent secants (e.g. duplicate images); it is marked invalid.

    Returns
    -------
    dict
        ``tangents`` (B, r, *S) orthonormal (in the anchors' dtype), ``step`` (B,) δ = (mean_j ‖v_j‖²)^{1/2},
        ``data_curvature`` (B,) (Σ_{a>r} S_a² / Σ_{a≤r} S_a²)^{1/2}, ``valid`` (B,) bool,
        ``singular_values`` (B, k) float64, descending.

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(1, 3, dtype=torch.float64)
    >>> near = torch.tensor([[[2., 0., 0.], [0., 1., 0.]]], dtype=torch.float64)
    >>> out = tangent_frames(x, near, rank=1)
    >>> out["tangents"].abs().tolist(), float(out["data_curvature"][0])
    ([[[1.0, 0.0, 0.0]]], 0.5)
    """
    require(anchors.ndim >= 1 and neighbours.ndim == anchors.ndim + 1
            and neighbours.shape[0] == anchors.shape[0] and neighbours.shape[2:] == anchors.shape[1:],
            f"tangent_frames: expected anchors (B, *S) and neighbours (B, k, *S), got {tuple(anchors.shape)}, "
            f"{tuple(neighbours.shape)}")
    b, k = neighbours.shape[:2]
    require(1 <= int(rank) <= k, f"rank: expected 1 ≤ r ≤ k = {k}, got {rank}")
    secants = (neighbours.to(torch.float64) - anchors.to(torch.float64)[:, None]).reshape(b, k, -1)
    # the k × k Gram matrix instead of an SVD of the (k, n) secants: n is ~2·10⁵ pixels, k a handful
    values, vectors = torch.linalg.eigh(secants @ secants.mT)
    values, vectors = values.flip(-1).clamp_min(0), vectors.flip(-1)                    # descending
    r = int(rank)
    top = values[:, :r]
    valid = top[:, -1] > degenerate_ratio * values[:, 0].clamp_min(torch.finfo(torch.float64).tiny)
    scale = torch.where(valid[:, None], top.sqrt(), torch.ones_like(top))
    tangents = (vectors[:, :, :r].mT @ secants) / scale[..., None]                       # (B, r, n)
    kept = top.sum(-1)
    curvature = torch.where(kept > 0, (values[:, r:].sum(-1) / kept.clamp_min(1e-300)).sqrt(),
                            torch.zeros_like(kept))
    return {"tangents": tangents.reshape(b, r, *anchors.shape[1:]).to(anchors.dtype),
            "step": (values.sum(-1) / k).sqrt(), "data_curvature": curvature, "valid": valid,
            "singular_values": values.sqrt()}


# --------------------------------------------------------------------------- encoder derivatives and penalties

def encoder_derivatives(encoder: Callable[[torch.Tensor], torch.Tensor], anchors: torch.Tensor,
                        tangents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and second directional derivatives J t_a and E''[t_a, t_a] by forward-over-forward JVPs.

    Parameters
    ----------
    encoder : callable
        (B, *S) → (B, *L), acting on each sample independently (no batch statistics); its parameters
        should not require grad (the JVPs run in grad mode, see below).
    anchors : torch.Tensor
        (B, *S) points x.
    tangents : torch.Tensor
        (B, r, *S) directions t_a (one set per anchor).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        (B, r, d) float64 each, d = numel of one encoding: d/dh E(x + h t_a) and d²/dh² E(x + h t_a) at h = 0.

    Examples
    --------
    >>> import torch
    >>> first, second = encoder_derivatives(lambda x: x ** 2, torch.ones(1, 2), torch.eye(2)[None])
    >>> first.tolist(), second.tolist()
    ([[[2.0, 0.0], [0.0, 2.0]]], [[[2.0, 0.0], [0.0, 2.0]]])
    """
    require(tangents.ndim == anchors.ndim + 1 and tangents.shape[0] == anchors.shape[0]
            and tangents.shape[2:] == anchors.shape[1:],
            f"encoder_derivatives: expected anchors (B, *S) and tangents (B, r, *S), got {tuple(anchors.shape)}, "
            f"{tuple(tangents.shape)}")
    # forward-mode group_norm views its input: primal and tangent must be contiguous (images from uint8 NHWC
    # arrive permuted, a tangent slice is strided)
    anchors = anchors.contiguous()
    firsts, seconds = [], []
    for a in range(tangents.shape[1]):
        direction = tangents[:, a].to(anchors.dtype).contiguous()

        def directional(x: torch.Tensor, direction=direction) -> torch.Tensor:
            return torch.func.jvp(encoder, (x,), (direction,))[1]

        # the JVP of the JVP along the same direction: its primal output is J t, its tangent E''[t, t].
        # Grad mode on: under no_grad some first-order rules (silu's) call kernels without forward AD; nothing
        # is recorded as long as the encoder's parameters do not require grad.
        with torch.enable_grad():
            first, second = torch.func.jvp(directional, (anchors,), (direction,))
        firsts.append(first.reshape(anchors.shape[0], -1).to(torch.float64))
        seconds.append(second.reshape(anchors.shape[0], -1).to(torch.float64))
    return torch.stack(firsts, 1), torch.stack(seconds, 1)


def tangent_metric(first: torch.Tensor) -> torch.Tensor:
    """G = (J T)(J T)ᵀ: (B, r, r) pull-back of the latent inner product to the tangent frame.

    Examples
    --------
    >>> import torch
    >>> tangent_metric(torch.tensor([[[3.0, 0.0], [0.0, 1.0]]])).tolist()
    [[[9.0, 0.0], [0.0, 1.0]]]
    """
    first = first.to(torch.float64)
    return first @ first.mT


def _mean_gain(metric: torch.Tensor) -> torch.Tensor:
    """c² = tr G / r (B,): the mean squared gain of the encoder along the tangent frame."""
    return metric.diagonal(dim1=-2, dim2=-1).sum(-1) / metric.shape[-1]


def distortion_penalty(metric: torch.Tensor) -> torch.Tensor:
    """Tangential distortion ‖G/c² − I‖²_F / r (B,): 0 iff the encoder is an isometry up to scale on T.

    It equals the squared coefficient of variation of the eigenvalues g_a of G; NaN where c² = 0.

    Examples
    --------
    >>> import torch
    >>> distortion_penalty(torch.diag(torch.tensor([1.0, 3.0]))[None]).tolist()
    [0.25]
    """
    c2 = _mean_gain(metric)
    eye = torch.eye(metric.shape[-1], dtype=metric.dtype, device=metric.device)
    safe = torch.where(c2 > 0, c2, torch.ones_like(c2))
    value = (metric / safe[:, None, None] - eye).square().sum((-2, -1)) / metric.shape[-1]
    return torch.where(c2 > 0, value, torch.full_like(value, math.nan))


def compression_penalty(metric: torch.Tensor, collapse_ratio: float = 1e-4) -> torch.Tensor:
    """Dimensional compression (1/r) Σ_a min(1, log⁺(c²/g_a) / log(1/ε)) (B,), ε = ``collapse_ratio``.

    The log-scaled fraction of tangent dimensions the encoder discards: a direction whose squared gain is
    below ε·c² counts as one whole lost dimension, one at the mean gain or above counts 0, and one in between
    counts log(c²/g_a)/log(1/ε) (with ε = 1e-4: a gain 10× below the mean, g = c²/100, counts ½). A projection
    that drops q of r tangent directions and keeps the rest isometric scores exactly q/r. 1 where c² = 0.

    Examples
    --------
    >>> import torch
    >>> compression_penalty(torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0]))[None]).tolist()
    [0.5]
    """
    require(0 < collapse_ratio < 1, f"collapse_ratio: expected 0 < ε < 1, got {collapse_ratio}")
    gains = torch.linalg.eigvalsh(metric.to(torch.float64)).clamp_min(0)
    c2 = gains.mean(-1, keepdim=True)
    # c²/0 = inf → a fully discarded direction; 0/0 (nothing passes) also counts as discarded
    ratio = torch.where(gains > 0, c2 / gains.clamp_min(1e-300), torch.full_like(gains, math.inf))
    lost = (ratio.log().clamp_min(0) / math.log(1 / collapse_ratio)).clamp_max(1)
    return lost.mean(-1)


def curvature_penalty(first: torch.Tensor, second: torch.Tensor, step: torch.Tensor,
                      rank_tolerance: float = 1e-6) -> torch.Tensor:
    """Curvature injection (δ/2)·(Σ_a ‖P⊥ E''[t_a, t_a]‖² / Σ_a ‖J t_a‖²)^{1/2} (B,).

    P⊥ removes the component in span{J t_a} (the tangent space of the encoded data): what is left bends the
    flat data directions out of the latent manifold's tangent plane. The ratio is the normal deviation after
    one step δ along the data, relative to the linear displacement (a curve of normal curvature κ and unit
    speed gives κ·δ/2), so it is unchanged by a global scale of either space. NaN where J T = 0.

    Parameters
    ----------
    first, second : torch.Tensor
        (B, r, d) from :func:`encoder_derivatives`.
    step : torch.Tensor
        (B,) δ, the data-space step (:func:`tangent_frames`).
    rank_tolerance : float
        Singular values of J T below this fraction of the largest do not span the tangent space.

    Examples
    --------
    >>> import torch
    >>> first = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)
    >>> second = torch.tensor([[[0.0, 0.0, 2.0], [0.5, 0.0, 2.0]]], dtype=torch.float64)
    >>> curvature_penalty(first, second, torch.tensor([1.0])).tolist()
    [1.0]
    """
    first, second = first.to(torch.float64), second.to(torch.float64)
    _, singular, basis = torch.linalg.svd(first, full_matrices=False)                    # basis (B, r, d)
    keep = singular > rank_tolerance * singular[:, :1].clamp_min(1e-300)
    basis = basis * keep[..., None]
    normal = second - (second @ basis.mT) @ basis
    speed = first.square().sum((-2, -1))
    ratio = (normal.square().sum((-2, -1)) / speed.clamp_min(1e-300)).sqrt()
    value = step.to(torch.float64) / 2 * ratio
    return torch.where(speed > 0, value, torch.full_like(value, math.nan))


def encoder_penalties(encoder: Callable[[torch.Tensor], torch.Tensor], anchors: torch.Tensor,
                      neighbours: torch.Tensor, *, rank: int = 4, collapse_ratio: float = 1e-4,
                      rank_tolerance: float = 1e-6) -> dict:
    """All four penalties at a batch of anchors (per anchor, not yet averaged).

    Parameters
    ----------
    encoder : callable
        (B, *S) → (B, *L): the encoder as the diffusion model sees it (e.g. the normalised posterior mean).
    anchors : torch.Tensor
        (B, *S) data points.
    neighbours : torch.Tensor
        (B, k, *S) their data neighbours (tangent estimate, :func:`tangent_frames`).
    rank, collapse_ratio, rank_tolerance :
        r tangent directions; ε of :func:`compression_penalty`; tolerance of :func:`curvature_penalty`.

    Returns
    -------
    dict
        (B,) float64 tensors ``compression``, ``distortion``, ``curvature``, ``data_curvature``, ``step``,
        ``mean_gain`` (c²) and ``valid`` (bool: an r-dimensional frame exists and c² > 0).

    Examples
    --------
    >>> import torch
    >>> x = torch.zeros(1, 3, dtype=torch.float64)
    >>> near = torch.eye(3, dtype=torch.float64)[None]
    >>> out = encoder_penalties(lambda v: 2 * v, x, near, rank=2)
    >>> [round(float(out[key][0]), 12) for key in ("compression", "distortion", "curvature")]
    [0.0, 0.0, 0.0]
    """
    frames = tangent_frames(anchors, neighbours, rank)
    first, second = encoder_derivatives(encoder, anchors, frames["tangents"])
    metric = tangent_metric(first)
    c2 = _mean_gain(metric)
    return {"compression": compression_penalty(metric, collapse_ratio), "distortion": distortion_penalty(metric),
            "curvature": curvature_penalty(first, second, frames["step"], rank_tolerance),
            "data_curvature": frames["data_curvature"], "step": frames["step"], "mean_gain": c2,
            "valid": frames["valid"] & (c2 > 0)}


def summarise_penalties(per_anchor: dict) -> dict:
    """Means over the valid anchors of the (B,) tensors of :func:`encoder_penalties` (concatenated batches).

    Returns
    -------
    dict
        ``compression``, ``distortion``, ``curvature``, ``data_curvature`` (float), ``n_valid``, ``n_anchors``.

    Examples
    --------
    >>> import torch
    >>> summarise_penalties({"compression": torch.tensor([0.5, 9.0]), "distortion": torch.tensor([1.0, 9.0]),
    ...                      "curvature": torch.tensor([0.0, 9.0]), "data_curvature": torch.tensor([2.0, 9.0]),
    ...                      "valid": torch.tensor([True, False])})["compression"]
    0.5
    """
    valid = per_anchor["valid"]
    require(bool(valid.any()), "fisher geometry: no anchor has an r-dimensional tangent frame with a nonzero "
                               "encoder gain (duplicate images, or an encoder constant along the data?)")
    out = {key: float(per_anchor[key][valid].to(torch.float64).mean())
           for key in ("compression", "distortion", "curvature", "data_curvature")}
    out.update(n_valid=int(valid.sum()), n_anchors=int(valid.numel()))
    return out
