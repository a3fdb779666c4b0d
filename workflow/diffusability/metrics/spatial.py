"""Spatial-structure metrics of iREPA (docs/metrics.md §3): LDS, CDS, SRSS, RMSC.

Every token ``u_p = Z[n, :, h, w]`` is L2-normalised (``max(|u|, 1e-8)``) and compared to the
others of the same image by cosine; pairs are selected by the Manhattan distance of their grid
positions. Instead of looping over images and pairs (as iREPA does), each statistic is written as
``sum_{p,q} W[p,q] <û_p, û_q> = sum_p <û_p, (Û W)_p>`` with a fixed (P, P) pair-weight matrix W,
so a batch of images costs one GEMM ``Û @ W`` with Û laid out as (B·C, P) — no (B, P, P)
Gram matrices are materialised. SRSS applies the same trick to the masked tokens ``m ⊙ Û``.
Products are float32; per-image sums accumulate in float64.
"""

from __future__ import annotations

import math

import torch

from ..errors import DiffusabilityError, require
from ..progress import progress
from .normalization import as_latent_tensor, as_mask_tensor

#: images per GEMM batch: (B, C, P) float32 is 8 MiB at P = 256, C = 32, B = 256 (cache-friendly)
DEFAULT_BATCH = 256


def manhattan_distances(height: int, width: int, device=None) -> torch.Tensor:
    """(P, P) int64 Manhattan distances between row-major grid positions ``p = h * width + w``."""
    hh, ww = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device),
                            indexing="ij")
    hh, ww = hh.reshape(-1), ww.reshape(-1)
    return (hh[:, None] - hh[None, :]).abs() + (ww[:, None] - ww[None, :]).abs()


def unit_tokens(latents: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) → (N, C, P) float32, each token (column) divided by ``max(|u_p|, 1e-8)``.

    Channels-first keeps the input's memory layout, so the GEMMs below need no transposed copy.
    """
    n, c, h, w = latents.shape
    tokens = latents.reshape(n, c, h * w).float()
    return tokens / tokens.norm(dim=1, keepdim=True).clamp_min(1e-8)


def _batches(n: int, batch_size: int, desc: str):
    starts = range(0, n, batch_size)
    return progress(starts, total=len(starts), desc=desc, unit="batch", disable=len(starts) < 8)


def _weighted_token_products(tokens: torch.Tensor, weight: torch.Tensor,
                             keep: torch.Tensor | None = None) -> torch.Tensor:
    """Per image and anchor ``<û_p, sum_q W[p,q] keep[q] û_q>`` → (B, P) float64.

    Args:
        tokens: (B, C, P) unit tokens; weight: (P, P) symmetric float32 (pass it converted once per call);
        keep: (B, P) 0/1 or None (all kept).
    """
    b, c, p = tokens.shape
    partners = tokens if keep is None else tokens * keep[:, None, :]
    # W is symmetric, so Û·Wᵀ = Û·W: one GEMM per batch
    mixed = (partners.reshape(b * c, p) @ weight).reshape(b, c, p)
    # the C-term dot products are exact enough in float32; the P-term sums are taken in float64
    return (tokens * mixed).sum(dim=1).double()


def _linear_pair_metric(latents: torch.Tensor, weight: torch.Tensor, batch_size: int, desc: str) -> torch.Tensor:
    """Per-image ``sum_{p,q} weight[p,q] * cos(p, q)`` for weight (P, P) → (N,) float64."""
    out = torch.empty(latents.shape[0], dtype=torch.float64, device=latents.device)
    weight = weight.float().contiguous()
    for start in _batches(latents.shape[0], batch_size, desc):
        tokens = unit_tokens(latents[start:start + batch_size])
        out[start:start + tokens.shape[0]] = _weighted_token_products(tokens, weight).sum(dim=1)
    return out


def local_distant_weights(height: int, width: int, far_dist: int = 6, device=None) -> torch.Tensor:
    """(P, P) float64 weights w with ``sum w * cos = mean cos(d = 1) - mean cos(d >= far_dist)``.

    The near mean over ordered d = 1 pairs equals the mean over unordered ones (cos is symmetric).
    """
    dist = manhattan_distances(height, width, device)
    near, far = dist == 1, dist >= far_dist
    require(bool(near.any()), f"latents: grid {height}x{width} has no neighbouring positions")
    require(bool(far.any()), f"lds: no position pairs at distance >= far_dist={far_dist} on a "
                             f"{height}x{width} grid (largest distance {height + width - 2})")
    return near.double() / near.sum() - far.double() / far.sum()


def local_distant_similarity(latents: torch.Tensor, far_dist: int = 6,
                             batch_size: int = DEFAULT_BATCH) -> dict:
    """Local-vs-Distant Similarity (LDS, iREPA): near minus far token cosine.

    Per image, the mean cosine of 4-neighbour token pairs minus the mean cosine of pairs at
    Manhattan distance ≥ ``far_dist``; averaged over images (docs/metrics.md §3.1).

    Parameters
    ----------
    latents : torch.Tensor, shape (N, C, H, W)
        Normalised latents; each token is the C-vector at one grid position.
    far_dist : int, default 6
        iREPA's distance of "far" pairs.
    batch_size : int, default 256
        Images per GEMM.

    Returns
    -------
    dict
        ``value`` (float, higher is better), ``per_image`` (torch.Tensor (N,) float64) and
        ``n_used`` (N).

    Examples
    --------
    Tokens whose direction turns slowly across the grid are more alike near than far; constant
    tokens score zero.

    >>> import math
    >>> import torch
    >>> from diffusability.metrics import local_distant_similarity
    >>> angle = (math.pi / 2) * torch.arange(8.0) / 7            # one angle per column of an 8×8 grid
    >>> smooth = torch.stack([angle.cos(), angle.sin()])[:, None, :].expand(2, 8, 8)[None]
    >>> round(local_distant_similarity(smooth)["value"], 4)
    0.3943
    >>> round(local_distant_similarity(torch.ones(1, 2, 8, 8))["value"], 4)
    0.0
    """
    latents = as_latent_tensor(latents)
    weight = local_distant_weights(latents.shape[2], latents.shape[3], far_dist, latents.device)
    per_image = _linear_pair_metric(latents, weight, batch_size, "lds")
    return {"value": float(per_image.mean()), "per_image": per_image, "n_used": latents.shape[0]}


def correlation_decay_weights(height: int, width: int, dmax: int = 8, device=None) -> torch.Tensor:
    """(P, P) float64 weights w with ``sum w * cos = -OLS slope of (d, S_d), d = 1..dmax``.

    ``S_d`` is the mean cosine of pairs at distance d; the slope ``sum_d (d - dbar) S_d /
    sum_d (d - dbar)^2`` is linear in the S_d (the ``- S_bar`` term vanishes because
    ``sum_d (d - dbar) = 0``).
    """
    require(dmax >= 2, f"cds: dmax must be >= 2 to fit a slope, got {dmax}")
    require(dmax <= height + width - 2, f"cds: dmax={dmax} exceeds the largest distance "
                                        f"{height + width - 2} on a {height}x{width} grid")
    dist = manhattan_distances(height, width, device)
    distances = torch.arange(1, dmax + 1, dtype=torch.float64)
    centred = distances - distances.mean()
    denominator = float((centred ** 2).sum())
    weight = torch.zeros(dist.shape, dtype=torch.float64, device=device)
    for d, coefficient in zip(range(1, dmax + 1), centred.tolist()):
        at_d = dist == d
        weight += at_d.double() * (-coefficient / denominator / float(at_d.sum()))
    return weight


def correlation_decay_slope(latents: torch.Tensor, dmax: int = 8, batch_size: int = DEFAULT_BATCH) -> dict:
    """Correlation-Decay Slope (CDS, iREPA): how fast token similarity falls with distance.

    ``S_d`` is the mean cosine of token pairs at Manhattan distance d; CDS is minus the slope of
    the least-squares line through ``(d, S_d)`` for d = 1 … ``dmax``, per image, averaged over
    images (docs/metrics.md §3.2).

    Parameters
    ----------
    latents : torch.Tensor, shape (N, C, H, W)
        Normalised latents.
    dmax : int, default 8
        Largest distance of the fit (at least 2, at most H + W − 2).
    batch_size : int, default 256

    Returns
    -------
    dict
        ``value`` (float, higher is better: faster decay), ``per_image`` (torch.Tensor (N,)
        float64), ``n_used``.

    Examples
    --------
    >>> import math
    >>> import torch
    >>> from diffusability.metrics import correlation_decay_slope
    >>> angle = (math.pi / 2) * torch.arange(8.0) / 7
    >>> smooth = torch.stack([angle.cos(), angle.sin()])[:, None, :].expand(2, 8, 8)[None]
    >>> round(correlation_decay_slope(smooth)["value"], 4)
    0.0604
    """
    latents = as_latent_tensor(latents)
    weight = correlation_decay_weights(latents.shape[2], latents.shape[3], dmax, latents.device)
    per_image = _linear_pair_metric(latents, weight, batch_size, "cds")
    return {"value": float(per_image.mean()), "per_image": per_image, "n_used": latents.shape[0]}


def semantic_region_self_similarity(latents: torch.Tensor, masks: torch.Tensor, d_pos: int = 1,
                                    d_neg: int = 6, min_fg: int = 64, min_bg: int = 64,
                                    batch_size: int = DEFAULT_BATCH) -> dict:
    """Semantic-Region Self-Similarity (SRSS, iREPA): foreground coherence against the background.

    For every foreground anchor token: the mean cosine to foreground tokens at distance
    1 … ``d_pos`` minus the mean cosine to background tokens at distance ≥ ``d_neg``; averaged
    over the anchors that have both kinds of partner, then (NaN-mean) over images
    (docs/metrics.md §3.3).

    Parameters
    ----------
    latents : torch.Tensor, shape (N, C, H, W)
        Normalised latents.
    masks : array-like of bool, shape (N, H, W)
        Foreground at latent resolution.
    d_pos, d_neg : int, default 1 and 6
        Distances of the positive (foreground) and negative (background) partners.
    min_fg, min_bg : int, default 64
        Images with fewer foreground / background tokens are excluded (iREPA's filter on a 16×16
        grid; scale it down for smaller grids).
    batch_size : int, default 256

    Returns
    -------
    dict
        ``value`` (float, higher is better), ``per_image`` (torch.Tensor (N,) float64, NaN for
        excluded images and images without a valid anchor), ``n_used``, ``n_excluded``. A call
        where no image has a value raises :class:`~diffusability.errors.DiffusabilityError`.

    Examples
    --------
    Foreground tokens all point along channel 0, background tokens along channel 1: foreground
    neighbours agree (cosine 1), distant background disagrees (cosine 0).

    >>> import torch
    >>> from diffusability.metrics import semantic_region_self_similarity
    >>> latents = torch.zeros(1, 2, 8, 8)
    >>> latents[:, 0, :, :4] = 1.0
    >>> latents[:, 1, :, 4:] = 1.0
    >>> masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    >>> masks[:, :, :4] = True
    >>> result = semantic_region_self_similarity(latents, masks, min_fg=8, min_bg=8)
    >>> result["value"], result["n_used"]
    (1.0, 1)
    """
    latents = as_latent_tensor(latents)
    n, _, h, w = latents.shape
    masks = as_mask_tensor(masks, (n, h, w)).to(latents.device).reshape(n, h * w)
    require(d_pos >= 1, f"srss: d_pos must be >= 1, got {d_pos}")
    require(d_neg >= 1, f"srss: d_neg must be >= 1, got {d_neg}")
    dist = manhattan_distances(h, w, latents.device)
    positive_pairs = ((dist >= 1) & (dist <= d_pos)).double()  # (P, P)
    negative_pairs = (dist >= d_neg).double()
    positive_weight, negative_weight = positive_pairs.float(), negative_pairs.float()
    n_fg = masks.sum(dim=1)
    passes = (n_fg >= min_fg) & (h * w - n_fg >= min_bg)
    require(bool(passes.any()),
            f"srss: no image has >= min_fg={min_fg} foreground and >= min_bg={min_bg} background "
            f"tokens in masks on the {h}x{w} grid (use smaller min_fg/min_bg for small grids)")
    kept = torch.nonzero(passes).flatten()
    per_image = torch.full((n,), math.nan, dtype=torch.float64, device=latents.device)
    kept_latents, kept_masks = latents[kept], masks[kept]
    for start in _batches(kept.numel(), batch_size, "srss"):
        tokens = unit_tokens(kept_latents[start:start + batch_size])           # (B, C, P)
        fg = kept_masks[start:start + batch_size].float()                      # (B, P)
        bg = 1.0 - fg
        # <û_p, Σ_q A[p,q] m_q û_q> for the FG neighbours and the distant BG tokens
        pos_sum = _weighted_token_products(tokens, positive_weight, fg)
        neg_sum = _weighted_token_products(tokens, negative_weight, bg)
        pos_count = fg.double() @ positive_pairs                               # (B, P); pairs are symmetric
        neg_count = bg.double() @ negative_pairs
        anchors = (fg > 0) & (pos_count > 0) & (neg_count > 0)
        diff = pos_sum / pos_count.clamp_min(1) - neg_sum / neg_count.clamp_min(1)
        n_anchors = anchors.sum(dim=1)
        values = (diff * anchors).sum(dim=1) / n_anchors.clamp_min(1)
        values[n_anchors == 0] = math.nan
        per_image[kept[start:start + tokens.shape[0]]] = values
    valid = ~torch.isnan(per_image)
    if not bool(valid.any()):
        raise DiffusabilityError("srss: no image has a foreground anchor with both a foreground "
                                 f"neighbour (d <= {d_pos}) and a background token at d >= {d_neg}")
    return {"value": float(per_image[valid].mean()), "per_image": per_image,
            "n_used": int(valid.sum()), "n_excluded": int(n - valid.sum())}


def rms_spatial_contrast(latents: torch.Tensor, batch_size: int = DEFAULT_BATCH) -> dict:
    """RMS Spatial Contrast (RMSC, iREPA): the spread of token directions within an image.

    ``sqrt(mean_p |û_p − ū|²)`` with û_p the unit tokens and ū their mean, per image, averaged
    over images (docs/metrics.md §3.4). A diversity measure rather than a structure measure; the
    study reports it but leaves it out of its analyses.

    Parameters
    ----------
    latents : torch.Tensor, shape (N, C, H, W)
    batch_size : int, default 256

    Returns
    -------
    dict
        ``value`` (float; higher = more diverse directions), ``per_image`` (torch.Tensor (N,)
        float64), ``n_used``.

    Examples
    --------
    Half the tokens along one channel and half along another: ``sqrt(1 − |ū|²) = sqrt(1/2)``.

    >>> import torch
    >>> from diffusability.metrics import rms_spatial_contrast
    >>> latents = torch.zeros(1, 2, 8, 8)
    >>> latents[:, 0, :, :4] = 1.0
    >>> latents[:, 1, :, 4:] = 1.0
    >>> round(rms_spatial_contrast(latents)["value"], 4)
    0.7071
    >>> round(rms_spatial_contrast(torch.ones(1, 2, 8, 8))["value"], 4)
    0.0
    """
    latents = as_latent_tensor(latents)
    out = torch.empty(latents.shape[0], dtype=torch.float64, device=latents.device)
    for start in _batches(latents.shape[0], batch_size, "rmsc"):
        block = latents[start:start + batch_size]
        b, c, h, w = block.shape
        tokens = block.reshape(b, c, h * w).double()                           # (B, C, P)
        squared_norms = tokens.pow(2).sum(dim=1)                               # (B, P)
        inverse = 1.0 / squared_norms.sqrt().clamp_min(1e-8)
        # mean_p |û_p − ū|² = mean_p |û_p|² − |ū|², with ū = Û · (1/|u|) / P as one bmm; float64
        # keeps the difference exact enough when all tokens point the same way
        mean_unit = torch.bmm(tokens, inverse.unsqueeze(2)).squeeze(2) / (h * w)  # (B, C)
        spread = (squared_norms * inverse.pow(2)).mean(dim=1) - mean_unit.pow(2).sum(dim=1)
        out[start:start + b] = spread.clamp_min(0.0).sqrt()
    return {"value": float(out.mean()), "per_image": out, "n_used": latents.shape[0]}
