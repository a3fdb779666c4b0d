"""Manifold continuity (METRICS.md §5): interpolated FID (iFID).

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
    """Slerp of each query towards a random one of its K cosine-nearest pool latents.

    Args:
        queries: (N, D) (or (N, C, H, W), flattened); pool: (M, D).
    Returns:
        (N, D) in the queries' dtype; with ``return_details`` also
        ``dict(neighbor (N,) pool index, entropy (N,) nats of the pick distribution)``.
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
    """iFID: Fréchet distance between features of real images and of decoded interpolations.

    Args:
        decode_fn: latents (B, C, H, W) → images (B, 3, H', W') (whatever ``feature_fn`` takes).
        feature_fn: images → features (B, F).
        queries: (N, C, H, W) latents of the real images; pool: (M, C, H, W) neighbour pool.
        reference_features: (N_ref, F) features of the real images.
    Returns:
        ``dict(value, n, mean_choice_entropy)``; lower is better.
    """
    from ..evaluation import feature_statistics, frechet_distance

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
