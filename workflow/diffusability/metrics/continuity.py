"""Manifold continuity (docs/metrics.md §5): interpolated FID (iFID).

Each query latent is interpolated half-way (slerp) towards one of its K cosine-nearest pool
latents, picked at random with probability softmax(−mean squared difference); the decoded
interpolations are compared with real images by Fréchet distance. The official protocol uses raw
(un-normalised) flattened latents, train-set pool, K = 10, α = 0.5.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..errors import require
from ..progress import progress
from ..seeding import torch_generator


def _flat(latents, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(latents)
    require(tensor.is_floating_point() and tensor.ndim >= 2,
            f"{name}: expected float latents (N, D) or (N, C, H, W), got {tuple(tensor.shape)}")
    require(bool(torch.isfinite(tensor).all()), f"{name}: contains NaN or Inf")
    return tensor.reshape(tensor.shape[0], -1)


def cosine_top_k(queries: torch.Tensor, pool: torch.Tensor, k: int, exclude_self: bool = False,
                 chunk: int = 1024) -> torch.Tensor:
    """(N, k) int64 indices of the k pool rows most cosine-similar to each query (N, D) vs pool (M, D).

    ``exclude_self`` means queries *are* the pool (N = M) and row i may not pick itself.
    """
    require(queries.shape[1] == pool.shape[1],
            f"pool: latent dimension {pool.shape[1]} differs from queries' {queries.shape[1]}")
    available = pool.shape[0] - (1 if exclude_self else 0)
    require(1 <= k <= available, f"continuity: k={k} must be in [1, {available}] (pool size)")
    if exclude_self:
        require(queries.shape[0] == pool.shape[0], "continuity: exclude_self needs queries == pool")
    unit_pool = pool.float() / pool.float().norm(dim=1, keepdim=True).clamp_min(1e-8)
    out = torch.empty(queries.shape[0], k, dtype=torch.long, device=queries.device)
    for start in range(0, queries.shape[0], chunk):
        q = queries[start:start + chunk].float()
        scores = (q / q.norm(dim=1, keepdim=True).clamp_min(1e-8)) @ unit_pool.T
        if exclude_self:
            rows = torch.arange(q.shape[0], device=q.device)
            scores[rows, rows + start] = -torch.inf
        out[start:start + q.shape[0]] = scores.topk(k, dim=1).indices
    return out


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Row-wise spherical interpolation of raw vectors (N, D); linear where sin θ < 1e-6.

    ``[sin((1−α)θ) a + sin(αθ) b] / sin θ`` with θ the angle between a and b (only θ uses the
    normalised vectors; the weights multiply the raw ones).
    """
    a64, b64 = a.double(), b.double()
    cos = (a64 * b64).sum(dim=1) / (a64.norm(dim=1) * b64.norm(dim=1)).clamp_min(1e-30)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    sin_theta = torch.sin(theta)
    linear = sin_theta < 1e-6
    safe = torch.where(linear, torch.ones_like(sin_theta), sin_theta)
    wa = torch.where(linear, torch.full_like(theta, 1 - alpha), torch.sin((1 - alpha) * theta) / safe)
    wb = torch.where(linear, torch.full_like(theta, alpha), torch.sin(alpha * theta) / safe)
    return (wa[:, None] * a64 + wb[:, None] * b64).to(a.dtype)


def interpolated_latents(queries, pool, k: int = 10, alpha: float = 0.5, seed: int = 0,
                         exclude_self: bool = False, chunk: int = 1024, return_details: bool = False):
    """Slerp each query half-way (by default) towards a random one of its K cosine-nearest pool latents.

    The neighbour is drawn among the K candidates with probability softmax(−mean squared
    difference), as in the iFID code; the interpolation is on the raw vectors
    (docs/metrics.md §5).

    Parameters
    ----------
    queries : array-like, shape (N, D) or (N, C, H, W)
        Flattened to (N, D).
    pool : array-like, shape (M, D) or (M, C, H, W)
    k : int, default 10
    alpha : float, default 0.5
        Slerp position: 0 is the query, 1 the neighbour.
    seed : int, default 0
        Seed of the neighbour pick.
    exclude_self : bool, default False
        The queries are the pool (N = M) and row i may not pick itself.
    chunk : int, default 1024
    return_details : bool, default False
        Also return ``{"neighbor": (N,) pool index, "entropy": (N,) nats of the pick distribution}``.

    Returns
    -------
    torch.Tensor, shape (N, D)
        In the queries' dtype (and the details dict when ``return_details``).

    Examples
    --------
    The nearest pool latent of e1 by cosine is e2 (cosine 0 beats −1); half-way on the great
    circle between them:

    >>> import torch
    >>> from diffusability.metrics import interpolated_latents
    >>> queries = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    >>> pool = torch.tensor([[0.0, 1.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0]])
    >>> interpolated_latents(queries, pool, k=1)
    tensor([[0.7071, 0.7071, 0.0000, 0.0000]])
    """
    q, p = _flat(queries, "queries"), _flat(pool, "pool")
    require(0.0 <= alpha <= 1.0, f"continuity: alpha must be in [0, 1], got {alpha}")
    candidates = cosine_top_k(q, p, k, exclude_self, chunk)                  # (N, K)
    sq_diff = (p[candidates].double() - q.double()[:, None, :]).pow(2).mean(dim=2)  # (N, K)
    probabilities = torch.softmax(-sq_diff, dim=1)
    generator = torch_generator("ifid-neighbour", seed)
    pick = torch.multinomial(probabilities.cpu(), 1, generator=generator).squeeze(1).to(q.device)
    neighbor = candidates.gather(1, pick[:, None]).squeeze(1)
    out = slerp(q, p[neighbor], alpha)
    if return_details:
        entropy = -(probabilities * probabilities.clamp_min(1e-300).log()).sum(dim=1)
        return out, {"neighbor": neighbor, "entropy": entropy}
    return out


def interpolated_fd(decode_fn: Callable[[torch.Tensor], torch.Tensor],
                    feature_fn: Callable[[torch.Tensor], torch.Tensor], queries: torch.Tensor,
                    pool: torch.Tensor, reference_features, k: int = 10, alpha: float = 0.5, seed: int = 0,
                    exclude_self: bool = False, batch_size: int = 64) -> dict:
    """Interpolated FID (iFID): Fréchet distance between real images and decoded interpolations.

    Each query latent is replaced by :func:`interpolated_latents` (slerp towards a cosine
    neighbour), decoded, and featurised; the result is the Fréchet distance of those features to
    ``reference_features`` (docs/metrics.md §5). The official protocol: raw latents, train-set
    pool, K = 10, α = 0.5, Inception features.

    Parameters
    ----------
    decode_fn : callable
        Latents (B, C, H, W) → images (whatever ``feature_fn`` takes).
    feature_fn : callable
        Images → features (B, F).
    queries : torch.Tensor, shape (N, C, H, W)
        Latents of the real images.
    pool : torch.Tensor, shape (M, C, H, W)
        The neighbour pool.
    reference_features : array-like, shape (N_ref, F)
        Features of the real images.
    k, alpha, seed, exclude_self
        As in :func:`interpolated_latents`.
    batch_size : int, default 64
        Latents per decode.

    Returns
    -------
    dict
        ``value`` (float, lower is better), ``n`` and ``mean_choice_entropy`` (nats).

    Examples
    --------
    With an identity "decoder" and flattening "features", iFID measures how far the slerped
    latents' statistics move from the originals':

    >>> import torch
    >>> from diffusability.metrics import interpolated_fd
    >>> latents = torch.randn(32, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    >>> result = interpolated_fd(lambda z: z, lambda images: images.reshape(len(images), -1), latents, latents,
    ...                          latents.reshape(32, -1), k=3, exclude_self=True)
    >>> result["n"], result["value"] > 0
    (32, True)
    """
    from .frechet import feature_statistics, frechet_distance

    queries = torch.as_tensor(queries)
    require(queries.ndim == 4, f"queries: expected latents (N, C, H, W), got {tuple(queries.shape)}")
    mixed, details = interpolated_latents(queries, pool, k, alpha, seed, exclude_self, return_details=True)
    mixed = mixed.reshape(queries.shape)
    features = []
    starts = range(0, mixed.shape[0], batch_size)
    with torch.no_grad():
        for start in progress(starts, total=len(starts), desc="iFID decode", unit="batch"):
            features.append(feature_fn(decode_fn(mixed[start:start + batch_size])).double().cpu())
    mu_gen, sigma_gen = feature_statistics(torch.cat(features))
    mu_ref, sigma_ref = feature_statistics(reference_features)
    value = frechet_distance(mu_ref, sigma_ref, mu_gen, sigma_gen)
    require(math.isfinite(value), "ifid: the Fréchet distance is not finite")
    return {"value": float(value), "n": int(mixed.shape[0]),
            "mean_choice_entropy": float(details["entropy"].mean())}
