"""``diffusability tokenizer-metrics`` and ``diffusability model-metrics``: the proxies that need networks.

* ``tokenizer-metrics``: affine equivariance of the encoder (docs/metrics.md §7) and iFID through the
  decoder (§5), from a tokenizer directory, the val split, its latent directory and the feature
  network of the reconstruction step (the domain net). Rows: ``rotate_error``,
  ``rotate_consistency``, ``scale_error``, ``scale_consistency``, ``ifid``; with ``fisher_geometry``
  (docs/fisher-geometry.md) also ``fi_gap``, ``fir_gap`` (data-vs-latent alignment of the FI/FIR
  curves, plus the curves themselves unless ``curves`` is false) and ``compression_penalty``,
  ``distortion_penalty``, ``curvature_penalty``, ``data_curvature`` (JVPs of the encoder).
* ``model-metrics``: FI/FIR of a trained diffusion model (EMA weights, §8.2 a) on the normalised
  val latents. Rows: ``fi_model``, ``fir_model`` (the same summaries as the registry's ``fi``/``fir``).

Both write the tidy rows of CONTRIBUTING.md. The spec is the workflow's ``metrics.tokenizer`` /
``metrics.model`` section; missing keys take the defaults below (the schema's defaults).
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import reject_unknown_keys, require

TOKENIZER_DEFAULTS = {"enabled": [], "batch_size": 64, "seed": 0,
                      "equivariance": {"rotations": [1, 2, 3], "scales": [0.5, 0.75], "max_images": None},
                      "ifid": {"k": 10, "alpha": 0.5, "pool": "train", "max_pool": None, "max_queries": None,
                               "seed": 0},
                      "fisher_geometry": {"data_grid": None, "sigma_min": 1e-3, "sigma_max": 100.0, "sigma_points": 32,
                                          "shrinkage": "ledoit_wolf", "curves": True, "anchors": 256, "neighbors": 8,
                                          "rank": 4, "collapse_ratio": 1e-4, "seed": 0}}
#: the metric families of ``tokenizer-metrics`` (each an ``enabled`` name and a parameter object)
TOKENIZER_FAMILIES = ("equivariance", "ifid", "fisher_geometry")
MODEL_DEFAULTS = {"enabled": [], "seed": 0,
                  "fisher": {"s_min": 1e-3, "s_max": 100.0, "s_points": 32, "probes": 2, "max_samples": 1000,
                             "seed": 0, "batch_size": 256}}
#: images converted to float at a time for the equivariance passes (bounds memory at ImageNet scale)
EQUIVARIANCE_CHUNK = 1024


def register(subparsers) -> None:
    """Add the ``tokenizer-metrics`` and ``model-metrics`` subcommands."""
    from ..specs import json_spec
    from ..devices import add_device_argument

    p = subparsers.add_parser("tokenizer-metrics", help="affine equivariance, iFID and Fisher geometry of a tokenizer",
                              description="Equivariance of the encoder (rot90, down-scales), iFID of the "
                                          "decoder (slerp to a cosine neighbour, Fréchet distance of features) "
                                          "and Fisher geometry (data-vs-latent FI/FIR alignment, encoder "
                                          "penalties by JVPs; docs/fisher-geometry.md).")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory")
    p.add_argument("--data", required=True,
                   help="val split (.safetensors with images uint8 (N, H, W, 3) and labels, or a shard index.json)")
    p.add_argument("--latents", required=True,
                   help="latent directory of the tokenizer (val/train raw latents for iFID, stats for normalising)")
    p.add_argument("--feature-net", required=True, help="domain-net directory (features of the Fréchet distance)")
    p.add_argument("--spec", required=True, type=json_spec,
                   help='JSON: {"enabled": ["equivariance", "ifid", "fisher_geometry"], "batch_size", '
                        '"equivariance": {...}, "ifid": {...}, "fisher_geometry": {...}}')
    p.add_argument("--out", required=True, help="output Parquet rows")
    add_device_argument(p)
    p.set_defaults(func=run_tokenizer_metrics)

    q = subparsers.add_parser("model-metrics", help="FI/FIR of a trained diffusion model",
                              description="Fisher information (rate) of the latent law as the trained "
                                          "velocity network sees it: denoiser score and Hutchinson JVPs.")
    q.add_argument("--diffusion", required=True, help="trained diffusion model directory (ema.safetensors)")
    q.add_argument("--latents", required=True, help="latent directory (val.safetensors, stats.safetensors)")
    q.add_argument("--spec", required=True, type=json_spec,
                   help='JSON: {"enabled": ["fisher"], "fisher": {"s_min", "s_max", "s_points", "probes", '
                        '"max_samples", "seed", "batch_size"}}')
    q.add_argument("--out", required=True, help="output Parquet rows")
    add_device_argument(q)
    q.set_defaults(func=run_model_metrics)


def resolve_spec(spec: dict, defaults: dict, where: str, families: tuple[str, ...]) -> dict:
    """``spec`` over ``defaults`` (one level deep for each metric family), unknown keys refused."""
    reject_unknown_keys(spec, defaults, where)
    resolved = {**defaults, **{k: v for k, v in spec.items() if k not in families}}
    for family in families:
        given = spec.get(family) or {}
        require(isinstance(given, dict), f"{where}.{family}: expected an object, got {type(given).__name__}")
        reject_unknown_keys(given, defaults[family], f"{where}.{family}")
        resolved[family] = {**defaults[family], **given}
    enabled = resolved["enabled"]
    require(isinstance(enabled, list) and enabled and set(enabled) <= set(families),
            f"{where}.enabled: expected a non-empty list of {list(families)}, got {enabled!r}")
    return resolved


def seeded_subset(count: int, limit, *names) -> "torch.Tensor":
    """Sorted indices of a seeded random subset of ``limit`` of ``count`` items (all when limit is None)."""
    import torch

    from ..seeding import torch_generator

    if limit is None or int(limit) >= count:
        return torch.arange(count)
    require(int(limit) >= 2, f"subset size {limit}: expected ≥ 2")
    return torch.randperm(count, generator=torch_generator(*names))[:int(limit)].sort().values


def _row(metric: str, value: float, n: int, params: dict, seconds: float) -> dict:
    from ..progress import log
    from ..rows import result_row
    from ..metrics.registry import metric_direction

    log.debug("%s took %.2f s", metric, seconds)
    return result_row(metric, value, metric_direction(metric), params, n)


def _write_rows(rows: list[dict], out, spec: dict, **sources) -> None:
    from ..io import provenance, write_parquet
    from ..rows import rows_frame

    write_parquet(rows_frame(rows), out, provenance(spec, **sources))


def _load_stats(directory: Path, channels: int):
    from ..io import load_tensors

    stats = load_tensors(directory / "stats.safetensors", ["mean", "std"])
    for key in ("mean", "std"):
        require(tuple(stats[key].shape) == (channels,), f"{directory / 'stats.safetensors'}: '{key}' must have "
                                                        f"shape ({channels},), got {tuple(stats[key].shape)}")
    require(bool((stats["std"] > 0).all()), f"{directory / 'stats.safetensors'}: 'std' must be positive")
    return stats["mean"].float(), stats["std"].float()


# ----------------------------------------------------------------------------- tokenizer-metrics

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
            rows.append(_row(f"{family}_{key}", value, n, record, seconds))
    return rows


def image_features(feature_net, images, rows, batch_size: int, device) -> "torch.Tensor":
    """Feature-net features (R, F) float64 on the CPU of the uint8 images ``images[rows]`` (rows: (R,) int64)."""
    import numpy as np
    import torch

    from ..imaging import to_model_input

    with torch.no_grad():
        return torch.cat([feature_net.features(to_model_input(np.asarray(images[rows[s:s + batch_size].numpy()]))
                                               .to(device)).double().cpu()
                          for s in range(0, len(rows), batch_size)])


def ifid_row(model, feature_net, images, val_latents, pool_latents, params: dict, batch_size: int,
             device) -> dict:
    """The iFID row: slerp of val latents to a cosine neighbour of the pool, decoded, vs the real images."""
    from ..imaging import to_model_input, to_uint8
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
    reference = image_features(feature_net, images, queries, batch_size, device)
    result = interpolated_fd(
        decode_fn=lambda z: model.decode(z),
        # decodes are quantised to uint8 like saved images, as in the reconstruction step's rFD
        feature_fn=lambda x: feature_net.features(to_model_input(to_uint8(x)).to(device)),
        queries=val_latents[queries].to(device), pool=pool.to(device), reference_features=reference,
        k=int(params["k"]), alpha=float(params["alpha"]), seed=seed, exclude_self=exclude_self,
        batch_size=batch_size)
    record = {"k": params["k"], "alpha": params["alpha"], "seed": seed, "pool": params["pool"],
              "n_pool": int(pool.shape[0]), "interpolation": "slerp of raw flattened posterior samples",
              "feature_net": "domain", "mean_choice_entropy": result["mean_choice_entropy"]}
    return _row("ifid", result["value"], result["n"], record, time.perf_counter() - started)


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
    rows = [_row("fi_gap", result["fi_gap"], n, record, seconds), _row("fir_gap", result["fir_gap"], n, record, seconds)]
    if params["curves"]:
        for space in ("data", "latent"):
            for name, key in (("fi", "phi"), ("fir", "psi")):
                rows += [_row(f"{name}_{space}_curve", value, n, {**record, "sigma": sigma}, seconds)
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
    return [_row(name, summary[key], summary["n_valid"], record, seconds) for key, name in names.items()]


def fisher_geometry_rows(model, images, labels, latents, mean, std, params: dict, batch_size: int,
                         device) -> list[dict]:
    """Alignment and penalty rows (docs/fisher-geometry.md); ``latents`` (N, C, h, w) already normalised."""
    grid = tuple(latents.shape[2:]) if params["data_grid"] is None else (int(params["data_grid"]),) * 2
    require(labels.shape == (images.shape[0],), "fisher_geometry: the val split needs one label per image")
    pooled = pooled_images(images, grid)
    return (fisher_alignment_rows(pooled, latents, labels, params, device)
            + fisher_penalty_rows(model, images, pooled, mean, std, params, batch_size, device))


def run_tokenizer_metrics(args) -> int:
    import torch

    from ..data.splits import open_image_split
    from ..devices import resolve_device
    from ..teacher.domain_net import load_domain_classifier
    from ..io import load_tensors
    from ..tokenizers.factory import load_tokenizer

    spec = resolve_spec(args.spec, TOKENIZER_DEFAULTS, "tokenizer-metrics --spec", TOKENIZER_FAMILIES)
    batch_size = int(spec["batch_size"])
    require(batch_size >= 1, f"tokenizer-metrics --spec: batch_size must be ≥ 1, got {batch_size}")
    device = torch.device(resolve_device(args.device))
    split = open_image_split(args.data)
    images = split.images   # checked: uint8 (N, H, W, 3); shards are read lazily
    directory = Path(args.latents)
    val = load_tensors(directory / "val.safetensors", ["latents"])["latents"].float()
    require(val.dim() == 4 and val.shape[0] == images.shape[0],
            f"{directory / 'val.safetensors'}: 'latents' must be ({images.shape[0]}, C, h, w) — one per image of "
            f"{args.data} — got {tuple(val.shape)}")
    model = load_tokenizer(args.tokenizer).to(device)
    rows = []
    with torch.no_grad():
        if "equivariance" in spec["enabled"]:
            mean, std = _load_stats(directory, val.shape[1])
            rows += equivariance_rows(model, images, mean, std, spec["equivariance"], batch_size, device,
                                      int(spec["seed"]))
        if "ifid" in spec["enabled"]:
            params = spec["ifid"]
            require(params["pool"] in ("train", "val"),
                    f"tokenizer-metrics --spec: ifid.pool must be 'train' or 'val', got {params['pool']!r}")
            pool = None
            if params["pool"] == "train":
                pool = load_tensors(directory / "train.safetensors", ["latents"])["latents"].float()
            feature_net = load_domain_classifier(args.feature_net).to(device)
            rows.append(ifid_row(model, feature_net, images, val, pool, params, batch_size, device))
        if "fisher_geometry" in spec["enabled"]:
            labels = torch.as_tensor(split.labels, dtype=torch.int64)
            mean, std = _load_stats(directory, val.shape[1])
            rows += fisher_geometry_rows(model, images, labels, (val - mean[:, None, None]) / std[:, None, None],
                                         mean, std, spec["fisher_geometry"], batch_size, device)
    _write_rows(rows, args.out, spec, tokenizer=str(args.tokenizer), latents=str(directory))
    return 0


# ----------------------------------------------------------------------------- model-metrics

def run_model_metrics(args) -> int:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..latents.normalised import load_normalised_latents
    from ..diffusion.train import load_diffusion_model
    from ..devices import resolve_device
    from ..progress import log
    from ..seeding import torch_generator
    from ..metrics.fisher import fisher_scalars, log_s_grid, model_fisher

    spec = resolve_spec(args.spec, MODEL_DEFAULTS, "model-metrics --spec", ("fisher",))
    params = spec["fisher"]
    require(int(params["probes"]) >= 1 and int(params["batch_size"]) >= 1,
            f"model-metrics --spec: fisher.probes and fisher.batch_size must be ≥ 1, got {params}")
    device = torch.device(resolve_device(args.device))
    latents, labels, _ = load_normalised_latents(Path(args.latents), "val")
    model = load_diffusion_model(args.diffusion, which="ema", device=device).requires_grad_(False)
    config = model.config
    require(tuple(latents.shape[1:]) == (config.in_channels, config.grid_size, config.grid_size),
            f"{args.latents}: val latents {tuple(latents.shape[1:])} do not fit the model of {args.diffusion} "
            f"(C, h, w) = {(config.in_channels, config.grid_size, config.grid_size)}")
    require(int(labels.min()) >= 0 and int(labels.max()) < config.num_classes,
            f"{args.latents}: val labels must lie in [0, {config.num_classes}) (the model's classes)")
    index = seeded_subset(latents.shape[0], params["max_samples"], "model-fisher-samples", params["seed"])
    started = time.perf_counter()
    # conditional velocity, no guidance: the score of the class-conditional latent law the model learnt.
    # The fused attention kernels (flash, memory-efficient) have no forward-mode AD, the JVP needs the math one.
    with sdpa_kernel(SDPBackend.MATH):
        curves = model_fisher(lambda x, t, y: model(x, t, y), latents[index].to(device), labels[index].to(device),
                              log_s_grid(params["s_min"], params["s_max"], params["s_points"]),
                              probes=int(params["probes"]), batch_size=int(params["batch_size"]),
                              generator=torch_generator("model-fisher", params["seed"], device=device.type))
    summary = fisher_scalars(curves)
    seconds = time.perf_counter() - started
    record = {**params, "weights": "ema", "conditioning": "class label, no guidance"}
    rows = [_row("fi_model", summary["fi"], len(index), record, seconds),
            _row("fir_model", summary["fir"], len(index), record, seconds)]
    log.info("model-metrics: fi_model %.4f, fir_model %.4f (%d samples, %.1f s)", summary["fi"], summary["fir"],
             len(index), seconds)
    _write_rows(rows, args.out, spec, diffusion=str(args.diffusion), latents=str(args.latents))
    return 0
