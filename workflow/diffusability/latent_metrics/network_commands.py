"""``diffusability tokenizer-metrics`` and ``diffusability model-metrics``: the proxies that need networks.

* ``tokenizer-metrics``: affine equivariance of the encoder (docs/metrics.md §7) and iFID through the
  decoder (§5), from a tokenizer directory, the val split and its latent directory. iFID's features
  (``ifid.feature_net``): ``inception`` — the FID Inception's pool3 (``--inception-weights``), the
  official protocol and the space of gFID/rFID — or ``domain`` — the domain net of ``--feature-net``
  (the command's default, the embedded default's stand-in without Inception weights). Rows: ``rotate_error``,
  ``rotate_consistency``, ``scale_error``, ``scale_consistency``, ``ifid``; with ``fisher_geometry``
  (docs/fisher-geometry.md) also ``fi_gap``, ``fir_gap`` (data-vs-latent alignment of the FI/FIR
  curves, plus the curves themselves unless ``curves`` is false) and ``compression_penalty``,
  ``distortion_penalty``, ``curvature_penalty``, ``data_curvature`` (JVPs of the encoder).
* ``model-metrics``: FI/FIR of a trained diffusion model (EMA weights, §8.2 a) on the normalised
  val latents. Rows: ``fi_model``, ``fir_model`` (the same summaries as the registry's ``fi``/``fir``).

Both write the tidy rows of CONTRIBUTING.md. The spec is the workflow's ``metrics.tokenizer`` /
``metrics.model`` section; missing keys take the defaults of :mod:`.spec` (the schema's defaults). The rows of
``tokenizer-metrics`` are computed by :mod:`diffusability.latent_metrics.tokenizer_rows`.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import reject_unknown_keys, require
from .spec import (IFID_FEATURE_NETS, MODEL_METRICS_DEFAULTS, TOKENIZER_FAMILIES,
                   TOKENIZER_METRICS_DEFAULTS)


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
    p.add_argument("--feature-net", default=None,
                   help="domain-net directory: iFID's features when ifid.feature_net is 'domain'")
    p.add_argument("--inception-weights", default=None,
                   help="FID Inception state dict (.safetensors/.pt/.pth): iFID's features when ifid.feature_net "
                        "is 'inception'")
    p.add_argument("--inception-sha256", default=None, help="expected SHA-256 of --inception-weights")
    p.add_argument("--spec", required=True, type=json_spec,
                   help='JSON: {"enabled": ["equivariance", "ifid", "fisher_geometry"], "batch_size", '
                        '"equivariance": {...}, "ifid": {...}, "fisher_geometry": {...}}')
    p.add_argument("--out", required=True, help="output Parquet rows")
    add_device_argument(p)
    p.set_defaults(func=run_tokenizer_metrics, input_files={"latents": tokenizer_metrics_input_files})

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
    q.set_defaults(func=run_model_metrics, input_files={"latents": ("val.safetensors", "stats.safetensors")})


def _check_like_default(value, default, where: str) -> None:
    """``value`` has the type of its default (a number for a float default, finite; the element type of a
    list default); keys whose default is None are left to the metric's own checks."""
    import math

    def number(x) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if default is None:
        return
    if isinstance(default, bool):
        require(isinstance(value, bool), f"{where}: expected true or false, got {value!r}")
    elif isinstance(default, int):
        require(isinstance(value, int) and not isinstance(value, bool), f"{where}: expected an integer, got {value!r}")
    elif isinstance(default, float):
        require(number(value), f"{where}: expected a finite number, got {value!r}")
    elif isinstance(default, str):
        require(isinstance(value, str), f"{where}: expected a string, got {value!r}")
    elif isinstance(default, list):
        require(isinstance(value, list), f"{where}: expected a list, got {value!r}")
        for item in value if default else ():  # each element like the default's first
            _check_like_default(item, default[0], where)


def resolve_spec(spec: dict, defaults: dict, where: str, families: tuple[str, ...]) -> dict:
    """``spec`` over ``defaults`` (one level deep for each metric family), unknown keys and values of
    another type than their default's refused (naming the key)."""
    reject_unknown_keys(spec, defaults, where)
    resolved = {**defaults, **{k: v for k, v in spec.items() if k not in families}}
    for key, value in spec.items():
        if key not in families:
            _check_like_default(value, defaults[key], f"{where}: {key}")
    for family in families:
        given = spec.get(family) or {}
        require(isinstance(given, dict), f"{where}.{family}: expected an object, got {type(given).__name__}")
        reject_unknown_keys(given, defaults[family], f"{where}.{family}")
        for key, value in given.items():
            _check_like_default(value, defaults[family][key], f"{where}: {family}.{key}")
        resolved[family] = {**defaults[family], **given}
    enabled = resolved["enabled"]
    require(isinstance(enabled, list) and enabled and set(enabled) <= set(families),
            f"{where}.enabled: expected a non-empty list of {list(families)}, got {enabled!r}")
    return resolved


def _write_rows(rows: list[dict], out, spec: dict, **sources) -> None:
    """The tidy rows as Parquet with the spec and the input paths as provenance."""
    from ..io import provenance, write_parquet
    from ..rows import rows_frame

    write_parquet(rows_frame(rows), out, provenance(spec, **sources))


def _load_stats(directory: Path, channels: int):
    """(mean, std) float (C,) of a latent directory's ``stats.safetensors``, checked."""
    from ..io import load_tensors

    stats = load_tensors(directory / "stats.safetensors", ["mean", "std"])
    for key in ("mean", "std"):
        require(tuple(stats[key].shape) == (channels,), f"{directory / 'stats.safetensors'}: '{key}' must have "
                                                        f"shape ({channels},), got {tuple(stats[key].shape)}")
    require(bool((stats["std"] > 0).all()), f"{directory / 'stats.safetensors'}: 'std' must be positive")
    return stats["mean"].float(), stats["std"].float()


def _check_ifid_inputs(params: dict, args) -> None:
    """Refuse an ``ifid`` spec the inputs cannot serve, naming the key (exit 2 through :func:`require`)."""
    require(params["pool"] in ("train", "val"),
            f"tokenizer-metrics --spec: ifid.pool must be 'train' or 'val', got {params['pool']!r}")
    net = params["feature_net"]
    require(net in IFID_FEATURE_NETS,
            f"tokenizer-metrics --spec: ifid.feature_net must be one of {list(IFID_FEATURE_NETS)}, got {net!r}")
    if net == "inception":
        require(args.inception_weights is not None,
                "tokenizer-metrics: ifid.feature_net 'inception' needs --inception-weights (the FID Inception "
                "state dict; in the workflow, generation.inception_weights)")
    else:
        require(args.feature_net is not None,
                "tokenizer-metrics: ifid.feature_net 'domain' needs --feature-net (the domain-net directory)")


def _ifid_features(net: str, args, device):
    """iFID's feature function (uint8 (n, H, W, 3) → float64 (n, F) on the CPU): rFID's or rFD's extractor."""
    from .tokenizer_rows import domain_features, inception_features

    if net == "inception":
        from ..evaluation.inception import load_fid_inception

        return inception_features(load_fid_inception(args.inception_weights, args.inception_sha256), device)
    from ..teacher.domain_net import load_domain_classifier

    return domain_features(load_domain_classifier(args.feature_net), device)


def tokenizer_metrics_input_files(args) -> tuple[str, ...]:
    """The files of ``--latents`` that ``tokenizer-metrics`` reads: val and stats, and the train latents only
    when iFID draws its neighbours from them (``ifid.pool`` "train", the default); a spec it cannot read keeps
    them (the command then refuses the spec itself)."""
    files = ("val.safetensors", "stats.safetensors")
    spec = args.spec if isinstance(args.spec, dict) else {}
    enabled = spec.get("enabled", TOKENIZER_METRICS_DEFAULTS["enabled"])
    ifid = spec.get("ifid") or {}
    pool = ifid.get("pool", TOKENIZER_METRICS_DEFAULTS["ifid"]["pool"]) if isinstance(ifid, dict) else "train"
    if not isinstance(enabled, list) or ("ifid" in enabled and pool != "val"):
        files += ("train.safetensors",)
    return files


def run_tokenizer_metrics(args) -> int:
    """Equivariance, iFID and Fisher-geometry rows of ``--tokenizer`` (the families ``enabled`` in ``--spec``)."""
    import torch

    from ..data.splits import open_image_split
    from ..devices import resolve_device
    from ..io import load_tensors
    from ..tokenizers.factory import load_tokenizer
    from .tokenizer_rows import equivariance_rows, fisher_geometry_rows, ifid_row

    spec = resolve_spec(args.spec, TOKENIZER_METRICS_DEFAULTS, "tokenizer-metrics --spec", TOKENIZER_FAMILIES)
    batch_size = int(spec["batch_size"])
    require(batch_size >= 1, f"tokenizer-metrics --spec: batch_size must be ≥ 1, got {batch_size}")
    device = torch.device(resolve_device(args.device))
    if "ifid" in spec["enabled"]:   # before any network is loaded: a wrong spec costs nothing
        _check_ifid_inputs(spec["ifid"], args)
    split = open_image_split(args.data)
    images = split.images   # checked: uint8 (N, H, W, 3); shards are read lazily
    directory = Path(args.latents)
    val = load_tensors(directory / "val.safetensors", ["latents"])["latents"].float()
    require(val.dim() == 4 and val.shape[0] == images.shape[0],
            f"{directory / 'val.safetensors'}: 'latents' must be ({images.shape[0]}, C, h, w) — one per image of "
            f"{args.data} — got {tuple(val.shape)}")
    require(bool(val.isfinite().all()), f"{directory / 'val.safetensors'}: 'latents' contains NaN or Inf")
    model = load_tokenizer(args.tokenizer).to(device)
    rows = []
    with torch.no_grad():
        if "equivariance" in spec["enabled"]:
            mean, std = _load_stats(directory, val.shape[1])
            rows += equivariance_rows(model, images, mean, std, spec["equivariance"], batch_size, device,
                                      int(spec["seed"]))
        if "ifid" in spec["enabled"]:
            params = spec["ifid"]
            pool = None
            if params["pool"] == "train":
                pool = load_tensors(directory / "train.safetensors", ["latents"])["latents"].float()
            rows.append(ifid_row(model, _ifid_features(params["feature_net"], args, device), params["feature_net"],
                                 images, val, pool, params, batch_size, device))
        if "fisher_geometry" in spec["enabled"]:
            labels = torch.as_tensor(split.labels, dtype=torch.int64)
            mean, std = _load_stats(directory, val.shape[1])
            rows += fisher_geometry_rows(model, images, labels, (val - mean[:, None, None]) / std[:, None, None],
                                         mean, std, spec["fisher_geometry"], batch_size, device)
    _write_rows(rows, args.out, spec, tokenizer=str(args.tokenizer), latents=str(directory))
    return 0


def run_model_metrics(args) -> int:
    """FI/FIR rows of the trained diffusion model of ``--diffusion`` on the normalised val latents."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..latents.normalised import load_normalised_latents
    from ..diffusion.train import load_diffusion_model
    from ..devices import resolve_device
    from ..metrics.fisher import fisher_scalars, log_s_grid, model_fisher
    from ..metrics.registry import metric_direction
    from ..progress import log
    from ..rows import result_row
    from ..seeding import seeded_subset, torch_generator

    spec = resolve_spec(args.spec, MODEL_METRICS_DEFAULTS, "model-metrics --spec", ("fisher",))
    params = spec["fisher"]
    require(int(params["probes"]) >= 1 and int(params["batch_size"]) >= 1,
            f"model-metrics --spec: fisher.probes and fisher.batch_size must be ≥ 1, got {params}")
    device = torch.device(resolve_device(args.device))
    latents, labels, _ = load_normalised_latents(Path(args.latents), "val")
    val_path = Path(args.latents) / "val.safetensors"
    require(latents.shape[0] >= 1, f"{val_path}: no latents")
    require(bool(torch.isfinite(latents).all()),
            f"{val_path}: 'latents' (normalised with stats.safetensors) contain NaN or Inf")
    model = load_diffusion_model(args.diffusion, which="ema", device=device).requires_grad_(False)
    config = model.config
    require(tuple(latents.shape[1:]) == (config.in_channels, config.grid_size, config.grid_size),
            f"{args.latents}: val latents {tuple(latents.shape[1:])} do not fit the model of {args.diffusion} "
            f"(C, h, w) = {(config.in_channels, config.grid_size, config.grid_size)}")
    require(int(labels.min()) >= 0 and int(labels.max()) < config.num_classes,
            f"{val_path}: labels must lie in [0, {config.num_classes}) (the classes of the model of {args.diffusion})")
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
    rows = [result_row(name, summary[key], metric_direction(name), record, len(index))
            for key, name in (("fi", "fi_model"), ("fir", "fir_model"))]
    log.info("model-metrics: fi_model %.4f, fir_model %.4f (%d samples, %.1f s)", summary["fi"], summary["fir"],
             len(index), seconds)
    _write_rows(rows, args.out, spec, diffusion=str(args.diffusion), latents=str(args.latents))
    return 0
