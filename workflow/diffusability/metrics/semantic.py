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


def linear_probe(train_feats, train_labels, val_feats, val_labels, epochs: int = 20, lr: float = 1e-3,
                 weight_decay: float = 0.0, batch_size: int = 256, n_classes: int | None = None,
                 seed: int = 0) -> dict:
    """Linear-probe top-1 accuracy: BatchNorm1d(affine=False) → Linear, trained with AdamW.

    The cheap cached-latent variant of the usual probe (docs/metrics.md §2.1): frozen features,
    flattened, a linear head trained for ``epochs`` passes over the training set, accuracy on the
    validation set.

    Parameters
    ----------
    train_feats, val_feats : array-like, shape (N, ...)
        Float features, flattened to (N, D) (flattened latents keep their spatial layout).
    train_labels, val_labels : array-like of int, shape (N,)
        Labels in ``[0, n_classes)``.
    epochs : int, default 20
    lr : float, default 1e-3
    weight_decay : float, default 0.0
    batch_size : int, default 256
    n_classes : int, optional
        Default: one more than the largest label.
    seed : int, default 0
        Seeds the head's initialisation and the batch order.

    Returns
    -------
    dict
        ``top1`` (validation accuracy, higher is better), ``train_top1``, ``n_train``, ``n_val``.

    Examples
    --------
    >>> import torch
    >>> from diffusability.metrics import linear_probe
    >>> features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.0], [0.0, 1.0], [0.1, 0.9], [0.0, 0.8]])
    >>> labels = torch.tensor([0, 0, 0, 1, 1, 1])
    >>> linear_probe(features, labels, features, labels, epochs=20, lr=0.1, batch_size=6)["top1"]
    1.0
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
    if n_classes is None:
        n_classes = int(max(train_y.max(), val_y.max())) + 1
    require(int(train_y.min()) >= 0 and int(max(train_y.max(), val_y.max())) < n_classes,
            f"linear_probe: labels must lie in [0, {n_classes})")
    generator = torch_generator("linear-probe", seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    head = torch.nn.Sequential(torch.nn.BatchNorm1d(train_x.shape[1], affine=False),
                               torch.nn.Linear(train_x.shape[1], n_classes))
    torch.random.set_rng_state(torch_state)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in progress(range(epochs), total=epochs, desc="linear probe", unit="epoch"):
        head.train()
        order = torch.randperm(train_x.shape[0], generator=generator)
        for start in range(0, train_x.shape[0], batch_size):
            index = order[start:start + batch_size]
            if index.numel() < 2:  # BatchNorm needs two samples in training mode
                continue
            loss = torch.nn.functional.cross_entropy(head(train_x[index]), train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    head.eval()
    with torch.no_grad():
        val_top1 = float((head(val_x).argmax(dim=1) == val_y).double().mean())
        train_top1 = float((head(train_x).argmax(dim=1) == train_y).double().mean())
    return {"top1": val_top1, "train_top1": train_top1, "n_train": int(train_x.shape[0]),
            "n_val": int(val_x.shape[0])}
