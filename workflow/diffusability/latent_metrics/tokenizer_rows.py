"""The rows of ``tokenizer-metrics``: the proxies that need the tokenizer's encoder/decoder.

Affine equivariance of the encoder (docs/metrics.md §7), iFID through the decoder (§5) and the
Fisher-geometry alignment and penalties (docs/fisher-geometry.md), each as tidy result rows, from
in-memory images, latents and networks; the maths are :mod:`diffusability.metrics`' pure functions.
"""

from __future__ import annotations

import time

from ..errors import require
from ..seeding import seeded_subset

#: images converted to float at a time for the equivariance passes (bounds memory at ImageNet scale)
EQUIVARIANCE_CHUNK = 1024


def metric_row(metric: str, value: float, n: int, params: dict, seconds: float) -> dict:
    """A tidy result row of ``metric`` with its registered direction (the time it took logged)."""
    from ..progress import log
    from ..rows import result_row
    from ..metrics.registry import metric_direction

    log.debug("%s took %.2f s", metric, seconds)
    return result_row(metric, value, metric_direction(metric), params, n)


def equivariance_rows(model, images, mean, std, params: dict, batch_size: int, device, seed: int = 0) -> list[dict]:
    """Rotate/Scale rows of an encoder on uint8 images (N, H, W, 3) (an array or memory-mapped shards),
    read and converted to float in chunks."""
    import numpy as np

    from ..imaging import to_model_input
    from ..progress import log
    from ..metrics.equivariance import affine_equivariance

    started = time.perf_counter()
    index = seeded_subset(images.shape[0], params["max_images"], "equivariance-images", seed)
    sums: dict[str, list[float]] = {}
    skipped: list[float] = []
    for start in range(0, len(index), EQUIVARIANCE_CHUNK):
        chunk = to_model_input(np.asarray(images[index[start:start + EQUIVARIANCE_CHUNK].numpy()])).to(device)
        # the posterior mean: deterministic, so E(τx) and τE(x) differ only by the encoder's equivariance
        result = affine_equivariance(lambda x: model.encode(x).mode(), chunk, rotations=tuple(params["rotations"]),
                                     scales=tuple(params["scales"]), batch_size=batch_size,
                                     latent_mean=mean.to(device), latent_std=std.to(device))
        skipped = result["skipped_scales"]
        for name, values in result["per_transform"].items():
            total = sums.setdefault(name, [0.0, 0.0])
            total[0] += values["error"] * chunk.shape[0]
            total[1] += values["consistency"] * chunk.shape[0]
    n = len(index)
    seconds = time.perf_counter() - started
    record = {"rotations": list(params["rotations"]), "scales": [s for s in params["scales"] if s not in skipped],
              "posterior": "mean", "latents": "normalised with the train statistics",
              "max_images": params["max_images"]}
    if skipped:
        record["skipped_scales"] = skipped
        log.warning("equivariance: scales %s skipped (the scaled image is not a whole number of latent tokens)",
                    skipped)
    rows = []
    for family, prefix in (("rotate", "rot90"), ("scale", "scale")):
        members = [v for name, v in sums.items() if name.startswith(prefix)]
        if not members:  # e.g. every scale skipped: no row rather than a NaN in the tables
            log.warning("equivariance: no %s transform is usable; no %s rows", family, family)
            continue
        for key in ("error", "consistency"):
            value = sum(m[0 if key == "error" else 1] for m in members) / (len(members) * n)
            rows.append(metric_row(f"{family}_{key}", value, n, record, seconds))
    return rows


#: what the ``features`` of :func:`ifid_row` are, by ``metrics.tokenizer.ifid.feature_net`` (the row's params)
IFID_FEATURES = {"inception": "FID Inception-v3 pool3 (TF1 resize to 299), as gFID and rFID",
                 "domain": "domain-net penultimate features, as rFD (the embedded default's stand-in)"}


def inception_features(net, device):
    """uint8 (n, H, W, 3) CPU batch → pool3 (n, 2048) float64 on the CPU of the FID Inception ``net``.

    rFID's extractor (``reconstruction/measure.py``), written out here so that the tokenizer metrics do not
    import the reconstruction stage (whose code would then rerun them): the TF1 resize to 299 runs on the
    CPU, the network on ``device``.
    """
    net = net.to(device)
    return lambda batch: net.forward_preprocessed(net.preprocess(batch).to(device))["pool3"].double().cpu()


def domain_features(net, device):
    """uint8 (n, H, W, 3) CPU batch → the domain net's penultimate features (n, F) float64 on the CPU (as rFD)."""
    from ..imaging import to_model_input

    net = net.to(device)
    return lambda batch: net.features(to_model_input(batch).to(device)).double().cpu()


def image_features(features, images, rows, batch_size: int) -> "torch.Tensor":
    """Features (R, F) float64 on the CPU of the uint8 images ``images[rows]`` (rows: (R,) int64).

    Parameters
    ----------
    features : callable
        uint8 (n, H, W, 3) CPU tensor → (n, F) float64 CPU features (see :func:`ifid_row`).
    images : array-like, shape (N, H, W, 3)
        uint8 images (an array or memory-mapped shards), read ``batch_size`` rows at a time.
    rows : torch.Tensor, shape (R,)
    batch_size : int
    """
    import numpy as np
    import torch

    with torch.no_grad():
        return torch.cat([features(torch.as_tensor(np.asarray(images[rows[s:s + batch_size].numpy()])))
                          for s in range(0, len(rows), batch_size)])


def ifid_row(model, features, feature_net: str, images, val_latents, pool_latents, params: dict,
             batch_size: int, device) -> dict:
    """The iFID row: slerp of val latents to a cosine neighbour of the pool, decoded, vs the real images.

    Parameters
    ----------
    model : torch.nn.Module
        The tokenizer (``decode``), on ``device``.
    features : callable
        uint8 (n, H, W, 3) CPU tensor → (n, F) float64 CPU features: the FID Inception's pool3
        (:func:`inception_features`) or the domain net's features (:func:`domain_features`), applied
        alike to the real images and to the decoded midpoints.
    feature_net : {"inception", "domain"}
        Which network ``features`` runs (recorded in the row's params).
    images : array-like, shape (N, H, W, 3)
        The uint8 val images, one per val latent.
    val_latents, pool_latents : torch.Tensor, shape (N, C, h, w) and (M, C, h, w)
        Raw latents; ``pool_latents`` is None for ``pool: val``.
    params : dict
        The ``ifid`` spec (k, alpha, pool, max_pool, max_queries, seed, feature_net).
    batch_size : int
        Images per decode and per feature pass.
    device : torch.device
        Where the latents are decoded.

    Returns
    -------
    dict
        The tidy ``ifid`` row.
    """
    from ..imaging import to_uint8
    from ..metrics.continuity import interpolated_fd

    started = time.perf_counter()
    seed = params["seed"]
    queries = seeded_subset(val_latents.shape[0], params["max_queries"], "ifid-queries", seed)
    exclude_self = params["pool"] == "val"
    if exclude_self:
        pool = val_latents[queries]  # the val queries are their own pool (self excluded)
    else:
        pool = pool_latents
        if params["max_pool"] is not None:  # (an index with every row would copy the whole train pool)
            pool = pool_latents[seeded_subset(pool_latents.shape[0], params["max_pool"], "ifid-pool", seed)]
    reference = image_features(features, images, queries, batch_size)
    result = interpolated_fd(
        decode_fn=lambda z: model.decode(z),
        # decodes are quantised to uint8 like saved images and featurised by the very function of the real
        # images (on the CPU side, as rFID's reconstructions), so only the decoder separates the two sets
        feature_fn=lambda x: features(to_uint8(x).cpu()),
        queries=val_latents[queries].to(device), pool=pool.to(device), reference_features=reference,
        k=int(params["k"]), alpha=float(params["alpha"]), seed=seed, exclude_self=exclude_self,
        batch_size=batch_size)
    record = {"k": params["k"], "alpha": params["alpha"], "seed": seed, "pool": params["pool"],
              "n_pool": int(pool.shape[0]), "interpolation": "slerp of raw flattened posterior samples",
              "feature_net": feature_net, "features": IFID_FEATURES[feature_net],
              "mean_choice_entropy": result["mean_choice_entropy"]}
    return metric_row("ifid", result["value"], result["n"], record, time.perf_counter() - started)


def pooled_images(images, grid: tuple[int, int]) -> "torch.Tensor":
    """(N, 3, h, w) float32 block averages of uint8 images (N, H, W, 3) in [−1, 1], read in chunks."""
    import numpy as np
    import torch

    from ..data.splits import iterate_batches
    from ..imaging import to_model_input
    from ..metrics.fisher_geometry import pool_to_grid

    return torch.cat([pool_to_grid(to_model_input(np.asarray(images[rows])), grid)
                      for rows in iterate_batches(images.shape[0], EQUIVARIANCE_CHUNK)])


def fisher_alignment_rows(pooled, latents, labels, params: dict, device) -> list[dict]:
    """fi_gap / fir_gap (and, with ``curves``, the four curves) of block-averaged images vs normalised latents."""
    from ..metrics.fisher_geometry import fisher_alignment

    started = time.perf_counter()
    result = fisher_alignment(pooled.to(device), latents.to(device), labels.to(device),
                              sigma_min=params["sigma_min"], sigma_max=params["sigma_max"],
                              sigma_points=params["sigma_points"], shrinkage=params["shrinkage"])
    seconds = time.perf_counter() - started
    n = int(latents.shape[0])
    record = {key: params[key] for key in ("sigma_min", "sigma_max", "sigma_points", "shrinkage")}
    record.update(data_grid=list(pooled.shape[2:]), noise_axis="sigma = s / (total variance per dimension)",
                  data="val images, block-averaged pixels in [-1, 1]",
                  latents="stored val latents normalised with the train statistics",
                  data_dim=result["data"]["dim"], latent_dim=result["latent"]["dim"],
                  data_total_variance=result["data"]["total_variance"],
                  latent_total_variance=result["latent"]["total_variance"])
    rows = [metric_row("fi_gap", result["fi_gap"], n, record, seconds),
            metric_row("fir_gap", result["fir_gap"], n, record, seconds)]
    if params["curves"]:
        for space in ("data", "latent"):
            for name, key in (("fi", "phi"), ("fir", "psi")):
                rows += [metric_row(f"{name}_{space}_curve", value, n, {**record, "sigma": sigma}, seconds)
                         for sigma, value in zip(result["sigma"].tolist(), result[space][key].tolist())]
    return rows


def fisher_penalty_rows(model, images, pooled, mean, std, params: dict, batch_size: int, device) -> list[dict]:
    """The encoder penalties at seeded anchor images, tangents from neighbours in block-averaged pixel space."""
    import numpy as np
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..imaging import to_model_input
    from ..metrics.fisher_geometry import encoder_penalties, nearest_neighbours, summarise_penalties

    started = time.perf_counter()
    k = int(params["neighbors"])
    anchors = seeded_subset(images.shape[0], params["anchors"], "fisher-geometry-anchors", params["seed"])
    neighbours = nearest_neighbours(pooled.flatten(1), anchors, k)
    shift, scale = mean.to(device)[:, None, None], std.to(device)[:, None, None]
    model.requires_grad_(False)   # the JVPs run in grad mode: no parameter graph may be recorded

    def encoder(x):  # the posterior mean, normalised as the diffusion model sees the latents
        return (model.encode(x).mode() - shift) / scale

    per_batch = max(1, batch_size // (k + 1))    # each anchor brings k neighbour images
    parts: dict[str, list] = {}
    for start in range(0, len(anchors), per_batch):
        index, near = anchors[start:start + per_batch], neighbours[start:start + per_batch]
        x = to_model_input(np.asarray(images[index.numpy()])).to(device)
        x_near = to_model_input(np.asarray(images[near.flatten().numpy()])).to(device)
        # forward-mode AD has no fused attention kernels: the math one
        with sdpa_kernel(SDPBackend.MATH):
            out = encoder_penalties(encoder, x, x_near.reshape(len(index), k, *x.shape[1:]), rank=int(params["rank"]),
                                    collapse_ratio=float(params["collapse_ratio"]))
        for key, value in out.items():
            parts.setdefault(key, []).append(value.cpu())
    summary = summarise_penalties({key: torch.cat(values) for key, values in parts.items()})
    record = {key: params[key] for key in ("anchors", "neighbors", "rank", "collapse_ratio", "seed")}
    record.update(data_grid=list(pooled.shape[2:]), posterior="mean", latents="normalised with the train statistics",
                  tangents="top-r singular vectors of the secants to k nearest neighbours (block-averaged pixels)",
                  derivatives="forward-over-forward JVP", n_anchors=summary["n_anchors"])
    seconds = time.perf_counter() - started
    names = {"compression": "compression_penalty", "distortion": "distortion_penalty",
             "curvature": "curvature_penalty", "data_curvature": "data_curvature"}
    return [metric_row(name, summary[key], summary["n_valid"], record, seconds) for key, name in names.items()]


def fisher_geometry_rows(model, images, labels, latents, mean, std, params: dict, batch_size: int,
                         device) -> list[dict]:
    """Alignment and penalty rows (docs/fisher-geometry.md); ``latents`` (N, C, h, w) already normalised."""
    grid = tuple(latents.shape[2:]) if params["data_grid"] is None else (int(params["data_grid"]),) * 2
    require(labels.shape == (images.shape[0],), "fisher_geometry: the val split needs one label per image")
    pooled = pooled_images(images, grid)
    return (fisher_alignment_rows(pooled, latents, labels, params, device)
            + fisher_penalty_rows(model, images, pooled, mean, std, params, batch_size, device))
