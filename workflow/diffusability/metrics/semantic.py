"""Semantic separability (docs/metrics.md §2): Latent Neighbor Consistency and the linear probe.

LNC pools each image's foreground tokens, L2-normalises the pooled vector and reports the fraction
of its k nearest neighbours (self excluded) that share its label. Neighbours come from a chunked
similarity matrix and ``topk``, so memory stays at (chunk, N) whatever N is.
"""

from __future__ import annotations

import torch

from ..errors import require
from ..progress import progress
from ..seeding import torch_generator
from .normalization import as_label_tensor, as_latent_tensor, as_mask_tensor, require_two_classes

SIMILARITIES = ("cosine", "euclidean")


def pool_foreground(latents: torch.Tensor, masks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over each image's foreground tokens.

    Args:
        latents: (N, C, H, W); masks: (N, H, W) bool, or None for "every token is foreground".
    Returns:
        ``(pooled (N, C) float32, has_foreground (N,) bool)``; rows without foreground are zero.
    """
    n, c, h, w = latents.shape
    if masks is None:
        return latents.float().mean(dim=(2, 3)), torch.ones(n, dtype=torch.bool, device=latents.device)
    weights = masks.reshape(n, h * w, 1).to(device=latents.device, dtype=torch.float32)
    counts = weights.sum(dim=1)                                               # (N, 1)
    # one batched matrix-vector product in float32: the result is float32 anyway, and a float64 copy of
    # the (N, C, P) latents cost more than the whole kNN search at ImageNet-S scale
    sums = torch.bmm(latents.reshape(n, c, h * w).float(), weights).squeeze(2)  # (N, C)
    return sums / counts.clamp_min(1), counts.squeeze(1) > 0


def _prepare(features: torch.Tensor, similarity: str) -> torch.Tensor:
    require(similarity in SIMILARITIES, f"lnc: similarity must be one of {SIMILARITIES}, got {similarity!r}")
    features = features.float()
    if similarity == "cosine":
        return features / features.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return features


def _scores(queries: torch.Tensor, keys_t: torch.Tensor, key_sq_norms: torch.Tensor, similarity: str) -> torch.Tensor:
    """(Q, K) similarity (higher = nearer): cosine, or −squared Euclidean distance up to a per-row constant.

    ``keys_t`` is the (C, K) transposed key matrix, made contiguous once per search.
    """
    products = queries @ keys_t
    if similarity == "cosine":
        return products
    return 2 * products - key_sq_norms[None, :]  # -|q-k|^2 + |q|^2: same ranking per query


def knn_label_agreement(features: torch.Tensor, labels: torch.Tensor, k: int, similarity: str = "cosine",
                        groups: torch.Tensor | None = None, query_index: torch.Tensor | None = None,
                        chunk: int = 1024) -> torch.Tensor:
    """Per-query fraction of the k nearest keys that share the query's label.

    Args:
        features: (M, C) keys (and the queries selected by ``query_index``, default all).
        labels: (M,) int.
        groups: (M,) int or None; keys in the query's own group are excluded (the image id for
            token-level LNC). Without groups, only the query itself is excluded.
    Returns:
        (Q,) float64.
    """
    keys = _prepare(features, similarity)
    keys_t = keys.T.contiguous()
    key_sq_norms = keys.pow(2).sum(dim=1)
    m = keys.shape[0]
    if query_index is None:
        query_index = torch.arange(m, device=keys.device)
    out = torch.empty(query_index.shape[0], dtype=torch.float64, device=keys.device)
    starts = range(0, query_index.shape[0], chunk)
    for start in progress(starts, total=len(starts), desc="lnc", unit="chunk", disable=len(starts) < 8):
        index = query_index[start:start + chunk]
        scores = _scores(keys[index], keys_t, key_sq_norms, similarity)
        if groups is None:
            scores[torch.arange(index.shape[0], device=keys.device), index] = -torch.inf
        else:
            scores.masked_fill_(groups[index][:, None] == groups[None, :], -torch.inf)
        neighbours = scores.topk(k, dim=1).indices
        out[start:start + index.shape[0]] = (labels[neighbours] == labels[index][:, None]).double().mean(dim=1)
    return out


def latent_neighbor_consistency(latents: torch.Tensor, labels, masks=None, k: int = 5,
                                similarity: str = "cosine", level: str = "image",
                                max_queries: int = 100_000, seed: int = 0, chunk: int = 1024) -> dict:
    """Latent Neighbor Consistency (LNC): the share of same-label images among the k nearest.

    Each image's foreground tokens are averaged into one vector; LNC is the mean over images of
    the fraction of its ``k`` nearest neighbours (self excluded) that share its label
    (docs/metrics.md §2.2). Neighbours are searched in chunks of a similarity matrix, so memory
    stays at (chunk, N).

    Parameters
    ----------
    latents : torch.Tensor, shape (N, C, H, W)
        Normalised latents.
    labels : array-like of int, shape (N,)
    masks : array-like of bool, shape (N, H, W), optional
        Foreground at latent resolution; None means every token is foreground.
    k : int, default 5
        Neighbours per query (ImageNet-S val has ≈ 13.5 images per class, so k stays below that).
    similarity : {"cosine", "euclidean"}, default "cosine"
    level : {"image", "token"}, default "image"
        ``"image"``: one foreground-mean vector per image, images without foreground dropped.
        ``"token"``: every foreground token is a key, up to ``max_queries`` random foreground
        tokens are queries, and neighbours come from other images only.
    max_queries, seed : int
        Size and seed of the token-level query subset.
    chunk : int, default 1024
        Queries per similarity block.

    Returns
    -------
    dict
        ``value`` (float, higher is better), ``n_used`` (images, or query tokens at token level)
        and ``n_dropped`` (images without foreground).

    Examples
    --------
    Two classes whose latents point along different channels: every neighbour agrees.

    >>> import torch
    >>> from diffusability.metrics import latent_neighbor_consistency
    >>> latents = torch.zeros(6, 2, 2, 2)
    >>> latents[:3, 0] = 1.0
    >>> latents[3:, 1] = 1.0
    >>> latents[:, :, 0, 0] += 0.1 * torch.arange(6.0)[:, None]   # no two images identical
    >>> labels = torch.tensor([0, 0, 0, 1, 1, 1])
    >>> latent_neighbor_consistency(latents, labels, k=2)
    {'value': 1.0, 'n_used': 6, 'n_dropped': 0}
    """
    latents = as_latent_tensor(latents)
    n, c, h, w = latents.shape
    labels = as_label_tensor(labels, n).to(latents.device)
    require_two_classes(labels, "lnc")
    if masks is not None:
        masks = as_mask_tensor(masks, (n, h, w)).to(latents.device)
    require(k >= 1, f"lnc: k must be >= 1, got {k}")
    require(level in ("image", "token"), f"lnc: level must be 'image' or 'token', got {level!r}")
    if level == "image":
        pooled, has_fg = pool_foreground(latents, masks)
        kept = torch.nonzero(has_fg).flatten()
        require(kept.numel() > k, f"lnc: need more than k={k} images with foreground, got {kept.numel()}")
        agreement = knn_label_agreement(pooled[kept], labels[kept], k, similarity, chunk=chunk)
        return {"value": float(agreement.mean()), "n_used": int(kept.numel()),
                "n_dropped": int(n - kept.numel())}
    tokens = latents.reshape(n, c, h * w).transpose(1, 2).reshape(n * h * w, c)
    image_id = torch.arange(n, device=latents.device).repeat_interleave(h * w)
    fg = torch.ones(n * h * w, dtype=torch.bool, device=latents.device) if masks is None else masks.reshape(-1)
    tokens, image_id = tokens[fg], image_id[fg]
    n_images = int(torch.unique(image_id).numel())
    require(n_images >= 2, "lnc: token level needs foreground tokens in at least 2 images")
    generator = torch_generator("lnc-token-queries", seed)
    order = torch.randperm(tokens.shape[0], generator=generator)[:max_queries].to(latents.device)
    # every query needs k keys outside its own image
    largest_image = int(torch.bincount(image_id).max())
    require(tokens.shape[0] - largest_image >= k,
            f"lnc: fewer than k={k} foreground tokens outside an image")
    agreement = knn_label_agreement(tokens, labels[image_id], k, similarity, groups=image_id,
                                    query_index=order, chunk=chunk)
    return {"value": float(agreement.mean()), "n_used": int(order.numel()),
            "n_dropped": int(n - n_images)}


def linear_probe(train_feats, train_labels, val_feats, val_labels, max_iter: int = 500, tol: float = 1e-6,
                 weight_decay: float = 0.0, batch_size: int = 8192, n_classes: int | None = None) -> dict:
    """Linear-probe top-1 accuracy: standardised features → linear head, trained to convergence by L-BFGS.

    The cached-latent variant of the usual probe (docs/metrics.md §2.1): frozen features, flattened,
    standardised with the training set's exact mean and standard deviation (what
    ``BatchNorm1d(affine=False)`` estimates), and a linear softmax head (weights and bias, initialised at
    zero) that minimises the mean training cross-entropy plus ``weight_decay/2 · ‖W‖²`` — a convex problem —
    with full-batch L-BFGS (strong-Wolfe line search, history 20). Accuracy on the validation set.

    **Stopping rule** (torch's L-BFGS): the first of (a) the largest absolute gradient entry ≤ ``tol``,
    (b) a change of the objective or of the parameters between iterations < ``tol``, (c) ``max_iter``
    iterations. On linearly separable training data (no minimiser without weight decay) the loss falls
    until (b) holds, far below ``ln 2 / N`` — the level under which every training sample is classified
    correctly — so the training accuracy is 1.0. No randomness: the same inputs give the same head.

    Parameters
    ----------
    train_feats, val_feats : array-like, shape (N, ...)
        Float features, flattened to (N, D) (flattened latents keep their spatial layout).
    train_labels, val_labels : array-like of int, shape (N,)
        Labels in ``[0, n_classes)``.
    max_iter : int, default 500
        At most this many L-BFGS iterations (each one or more full passes over the training set).
    tol : float, default 1e-6
        Gradient and change tolerance of the stopping rule (the objective is in nats per sample).
    weight_decay : float, default 0.0
        L2 penalty on the weights (not the bias).
    batch_size : int, default 8192
        Rows per forward/backward pass of the full-batch objective (memory only; the result is the same up
        to floating-point summation order).
    n_classes : int, optional
        Default: one more than the largest label.

    Returns
    -------
    dict
        ``top1`` (validation accuracy, higher is better), ``train_top1``, ``train_loss`` (final objective),
        ``iterations``, ``converged`` (stopped by (a) or (b), not by ``max_iter``), ``n_train``, ``n_val``.

    Examples
    --------
    >>> import torch
    >>> from diffusability.metrics import linear_probe
    >>> features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.0], [0.0, 1.0], [0.1, 0.9], [0.0, 0.8]])
    >>> labels = torch.tensor([0, 0, 0, 1, 1, 1])
    >>> result = linear_probe(features, labels, features, labels)
    >>> result["top1"], result["converged"]
    (1.0, True)
    """
    train_x = torch.as_tensor(train_feats).float().reshape(len(train_feats), -1)
    val_x = torch.as_tensor(val_feats).float().reshape(len(val_feats), -1)
    require(train_x.shape[1] == val_x.shape[1],
            f"linear_probe: train features have {train_x.shape[1]} dims, val features {val_x.shape[1]}")
    require(bool(torch.isfinite(train_x).all()) and bool(torch.isfinite(val_x).all()),
            "linear_probe: features contain NaN or Inf")
    train_y = as_label_tensor(train_labels, train_x.shape[0], "train_labels")
    val_y = as_label_tensor(val_labels, val_x.shape[0], "val_labels")
    require(train_x.shape[0] >= 2, "linear_probe: need at least 2 training samples")
    require(max_iter >= 1 and tol > 0 and weight_decay >= 0 and batch_size >= 1,
            "linear_probe: max_iter ≥ 1, tol > 0, weight_decay ≥ 0 and batch_size ≥ 1 are required")
    if n_classes is None:
        n_classes = int(max(train_y.max(), val_y.max())) + 1
    require(int(train_y.min()) >= 0 and int(max(train_y.max(), val_y.max())) < n_classes,
            f"linear_probe: labels must lie in [0, {n_classes})")
    n, dims = train_x.shape
    # exact training statistics in float64, two chunked passes (BatchNorm's eps keeps constant dims finite)
    mean = torch.zeros(dims, dtype=torch.float64, device=train_x.device)
    for start in range(0, n, batch_size):
        mean += train_x[start:start + batch_size].double().sum(dim=0)
    mean /= n
    var = torch.zeros_like(mean)
    for start in range(0, n, batch_size):
        var += (train_x[start:start + batch_size].double() - mean).pow(2).sum(dim=0)
    scale = (var / n + 1e-5).rsqrt().float()
    shift = mean.float()

    weight = torch.zeros(n_classes, dims, device=train_x.device, requires_grad=True)
    bias = torch.zeros(n_classes, device=train_x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, max_eval=max(2 * max_iter, 25),
                                  tolerance_grad=tol, tolerance_change=tol, history_size=20,
                                  line_search_fn="strong_wolfe")

    def logits(x: torch.Tensor) -> torch.Tensor:
        return ((x - shift) * scale) @ weight.T + bias

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        total = 0.0
        for start in range(0, n, batch_size):
            index = slice(start, start + batch_size)
            loss = torch.nn.functional.cross_entropy(logits(train_x[index]), train_y[index], reduction="sum") / n
            loss.backward()
            total += float(loss.detach())
        if weight_decay:
            penalty = 0.5 * weight_decay * weight.pow(2).sum()
            penalty.backward()
            total += float(penalty.detach())
        return torch.tensor(total)

    with torch.enable_grad():
        optimizer.step(closure)  # runs the iterations; returns the objective at the start
    iterations = int(optimizer.state[weight].get("n_iter", 0))
    with torch.no_grad():
        final = sum(float(torch.nn.functional.cross_entropy(logits(train_x[start:start + batch_size]),
                                                            train_y[start:start + batch_size], reduction="sum"))
                    for start in range(0, n, batch_size)) / n + 0.5 * weight_decay * float(weight.pow(2).sum())
        val_top1 = _accuracy(logits, val_x, val_y, batch_size)
        train_top1 = _accuracy(logits, train_x, train_y, batch_size)
    return {"top1": val_top1, "train_top1": train_top1, "train_loss": final, "iterations": iterations,
            "converged": iterations < max_iter, "n_train": int(n), "n_val": int(val_x.shape[0])}


def _accuracy(logits, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        correct += int((logits(x[start:start + batch_size]).argmax(dim=1) == y[start:start + batch_size]).sum())
    return correct / x.shape[0]
