"""``diffusability train-tokenizer | encode | reconstruction``: the tokenizer stage's commands.

- ``train-tokenizer``: train (or resume) one tokenizer into its directory.
- ``import-tokenizer``: write a pretrained local checkpoint (diffusers or ours) as a tokenizer directory.
- ``encode``: fixed-seed posterior samples of the train and val splits, val masks pooled to the
  latent grid, per-channel mean / unbiased std of the train latents (CONTRIBUTING.md "latents").
- ``reconstruction``: PSNR / SSIM / rFD (domain-net Fréchet distance) of the trained tokenizer
  and of its untrained self, as tidy result rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping

from ..errors import require
from ..latent_statistics import channel_statistics  # noqa: F401 - encode writes them; re-exported
from ..rows import result_row, rows_frame

ENCODE_DEFAULTS = {"seed": 0, "batch_size": 256, "mask_pooling": "max", "mask_threshold": 0.5, "flip": False,
                   "chunk": 8192}
RECONSTRUCTION_DEFAULTS = {"seed": None, "batch_size": 256, "is_splits": 10}
#: posterior noise is drawn in fixed blocks of images so the latents do not depend on batch_size
NOISE_BLOCK = 256


def register(subparsers) -> None:
    """Add the tokenizer stage's subcommands to the ``diffusability`` parser."""
    from ..specs import json_spec
    from ..devices import add_device_argument

    parser = subparsers.add_parser("train-tokenizer", help="train (or resume) a VAE tokenizer",
                                   description="Train a tokenizer on a train split; resumes from OUT/checkpoints.")
    parser.add_argument("--spec", type=json_spec, required=True, help="JSON tokenizer spec (see TokenizerSpec)")
    parser.add_argument("--train", required=True, help="train split (.safetensors: images uint8 NHWC, labels; or a shard index.json)")
    parser.add_argument("--teacher", default=None, help="teacher directory: the domain net, or a local transformers Dinov2/CLIP/ViTMAE "
                             "(teacher for the perceptual loss and VF/REPA)")
    parser.add_argument("--out", required=True, help="tokenizer directory")
    parser.set_defaults(func=run_train_tokenizer)

    parser = subparsers.add_parser("import-tokenizer", help="import a pretrained tokenizer (no training)",
                                   description="Write a local diffusers AutoencoderKL folder, or a tokenizer "
                                               "of our format, as a tokenizer directory.")
    parser.add_argument("--source", required=True,
                        help="diffusers AutoencoderKL folder, or config.json + model.safetensors of ours")
    parser.add_argument("--spec", type=json_spec, required=True, help='JSON: {"name", "seed", "image_size"}')
    parser.add_argument("--out", required=True, help="tokenizer directory")
    parser.set_defaults(func=run_import_tokenizer)

    parser = subparsers.add_parser("encode", help="encode train/val splits into latents (posterior samples)",
                                   description="Write train/val latents and per-channel stats of a tokenizer.")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory")
    parser.add_argument("--train", required=True, help="train split (.safetensors or a shard index.json)")
    parser.add_argument("--val", required=True, help="val split (.safetensors or a shard index.json, with masks)")
    parser.add_argument("--spec", type=json_spec, required=True,
                        help='JSON: {"seed", "batch_size", "mask_pooling": "max"|"fraction", "mask_threshold"}')
    add_device_argument(parser)
    parser.add_argument("--out", required=True, help="latents directory")
    parser.set_defaults(func=run_encode)

    parser = subparsers.add_parser("reconstruction", help="PSNR/SSIM/rFD of a tokenizer vs its untrained self",
                                   description="Reconstruction rows (Parquet) of a tokenizer on a split.")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory")
    parser.add_argument("--data", required=True, help="image split (.safetensors)")
    parser.add_argument("--feature-net", required=True, help="domain-net directory (features for rFD)")
    parser.add_argument("--spec", type=json_spec, required=True, help='JSON: {"batch_size"}')
    parser.add_argument("--inception-weights", default=None,
                        help="FID Inception-v3 weights (.safetensors): adds the rFID rows")
    parser.add_argument("--inception-sha256", default=None, help="expected SHA-256 of --inception-weights")
    parser.add_argument("--lpips-weights", default=None,
                        help="LPIPS-VGG weights (VGG16 features + lin heads; .safetensors/.pth): adds the lpips rows")
    add_device_argument(parser)
    parser.add_argument("--out", required=True, help="result rows (.parquet)")
    parser.set_defaults(func=run_reconstruction)


def resolve_spec(spec: Mapping[str, Any] | None, defaults: Mapping[str, Any], what: str) -> dict[str, Any]:
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(defaults))
    require(not unknown, f"{what} spec: unknown key(s) {unknown}; known keys are {sorted(defaults)}")
    return {**defaults, **spec}


# ----------------------------------------------------------------------------- train-tokenizer

def run_train_tokenizer(args: argparse.Namespace) -> int:
    from ..data.splits import open_image_split
    from ..progress import log
    from .train import train_tokenizer

    from .spec import as_spec

    split = open_image_split(args.train)
    teacher = None
    if args.teacher:
        from .teachers import load_teacher

        teacher = load_teacher(args.teacher)
    # what the weights depend on besides the spec: a checkpoint of other inputs is never resumed
    spec = as_spec(args.spec)
    inputs = {"train": args.train, "teacher": args.teacher,
              "lpips_weights": spec.lpips_weights if spec.perceptual == "lpips" else None}
    train_tokenizer(split.images, split.labels, spec, args.out, teacher=teacher, inputs=inputs)
    log.info("train-tokenizer: wrote %s", args.out)
    return 0


def run_import_tokenizer(args: argparse.Namespace) -> int:
    from ..progress import log
    from .pretrained import import_pretrained_tokenizer

    import_pretrained_tokenizer(args.source, args.spec or {}, args.out)
    log.info("import-tokenizer: wrote %s from %s", args.out, args.source)
    return 0


# ----------------------------------------------------------------------------- encode

def posterior_noise(seed: int, split: str, start: int, stop: int, shape: tuple[int, ...]):
    """Standard normal noise (stop − start, *shape) for images [start, stop) of ``split``.

    Block b of NOISE_BLOCK images draws from ``torch_generator(seed, "encode", split, b)``, so an
    image's noise depends on its index only, never on the encoding batch size.
    """
    import torch

    from ..seeding import torch_generator

    pieces = []
    for block in range(start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK + 1):
        noise = torch.randn((NOISE_BLOCK, *shape), generator=torch_generator(seed, "encode", split, block))
        lo = max(start, block * NOISE_BLOCK) - block * NOISE_BLOCK
        hi = min(stop, (block + 1) * NOISE_BLOCK) - block * NOISE_BLOCK
        pieces.append(noise[lo:hi])
    return torch.cat(pieces)


def encode_images(model, images, seed: int, split: str, batch_size: int, sample: bool = True,
                  mirror: bool = False, device: str = "cpu", start: int = 0, stop: int | None = None):
    """uint8 (N,H,W,3) → float32 CPU latents of images [start, stop): posterior samples (or means if
    ``sample`` is False), shape (stop − start, C, h, w).

    ``images`` may be any array-like that slices to uint8 numpy/torch batches (a memory-mapped shard
    split is read batch by batch); ``mirror`` encodes each image flipped left-right. The model runs on
    ``device``; the posterior noise is drawn on the CPU by image index, so it is the same on every device,
    batch size and range.
    """
    import torch

    from ..data.splits import iterate_batches
    from ..imaging import to_model_input
    from ..progress import progress

    stop = images.shape[0] if stop is None else stop
    require(stop - start >= 1, f"encode: the {split} split is empty")
    outputs = []
    with torch.no_grad():
        for rows in progress(iterate_batches(stop - start, batch_size), total=-(-(stop - start) // batch_size),
                             desc=f"encode {split} [{start}, {stop})"):
            rows = slice(start + rows.start, start + rows.stop)
            batch = torch.as_tensor(images[rows])
            if mirror:
                batch = batch.flip(2)  # (n, H, W, 3): W is axis 2
            posterior = model.encode(to_model_input(batch).to(device))
            latents = posterior.mode()
            if sample:
                noise = posterior_noise(seed, split, rows.start, rows.stop, tuple(latents.shape[1:]))
                latents = latents + posterior.std * noise.to(latents.device)
            outputs.append(latents.float().cpu())
    return torch.cat(outputs)


def latent_shape(model, images, device: str) -> tuple[int, int, int]:
    """(C, h, w) of the tokenizer's latents for these images (one image encoded)."""
    import torch

    from ..imaging import to_model_input

    with torch.no_grad():
        return tuple(model.encode(to_model_input(torch.as_tensor(images[0:1])).to(device)).mode().shape[1:])


def encode_split_to_file(model, split, path, *, seed: int, name: str, batch_size: int, device: str,
                         metadata: dict, fingerprint: dict, chunk: int = ENCODE_DEFAULTS["chunk"],
                         mirror_copy: bool = False, mask_spec: dict | None = None):
    """Encode a split into ``path`` (.safetensors: ``latents`` float32 (N,C,h,w), ``labels`` int64 (N,),
    optionally ``latents_flip`` and pooled ``masks`` bool (N,h,w)), chunk by chunk, resumably.

    The file is written through :class:`~diffusability.io.ResumableTensorFile`: a killed job that is rerun
    continues after its last finished chunk of ``chunk`` images and ends with the same bytes.
    """
    import numpy as np

    from ..io import ResumableTensorFile
    from ..progress import log

    count = len(split)
    require(count >= 1, f"encode: the {name} split is empty")
    shape = latent_shape(model, split.images, device)
    tensors = {"latents": ("float32", (count, *shape)), "labels": ("int64", (count,))}
    if mirror_copy:
        tensors["latents_flip"] = ("float32", (count, *shape))
    if mask_spec is not None:
        tensors["masks"] = ("bool", (count, *shape[1:]))
    out = ResumableTensorFile(path, tensors, metadata, fingerprint)
    if out.resumed:
        log.info("encode %s: resuming %s (%s)", name, path, out.done)
    if out.done["labels"] < count:
        out.arrays["labels"][:] = np.asarray(split.labels, dtype=np.int64)
        out.mark("labels", count)
    streams = [("latents", name, False)] + ([("latents_flip", f"{name}_flip", True)] if mirror_copy else [])
    for key, noise_split, mirror in streams:
        for start in range(out.done[key], count, chunk):
            stop = min(start + chunk, count)
            out.arrays[key][start:stop] = encode_images(model, split.images, seed, noise_split, batch_size,
                                                        mirror=mirror, device=device, start=start,
                                                        stop=stop).numpy()
            out.mark(key, stop)
    if mask_spec is not None and out.done["masks"] < count:
        out.arrays["masks"][:] = pooled_masks(split, shape[1:], mask_spec["rule"], mask_spec["threshold"]).numpy()
        out.mark("masks", count)
    out.commit()


def pooled_masks(split, grid: tuple[int, int], rule: str, threshold: float, batch_size: int = 1024):
    """The split's pixel masks pooled onto the latent grid, batch by batch: bool torch (N, h, w)."""
    import numpy as np
    import torch

    from ..data.masks import pool_masks_to_grid
    from ..data.splits import iterate_batches

    pieces = [pool_masks_to_grid(np.asarray(split.masks[rows]), grid, rule=rule, threshold=threshold,
                                 valid=None if split.mask_valid is None else np.asarray(split.mask_valid[rows]))
              for rows in iterate_batches(len(split), batch_size)]
    return torch.as_tensor(np.concatenate(pieces)).bool()


def run_encode(args: argparse.Namespace) -> int:
    from ..data.splits import open_image_split
    from ..devices import resolve_device
    from ..io import file_sha256, memory_map_tensors, save_tensors
    from ..progress import log
    from .factory import load_tokenizer

    spec = resolve_spec(args.spec, ENCODE_DEFAULTS, "encode")
    require(spec["mask_pooling"] in ("max", "fraction"),
            f"encode spec: mask_pooling must be 'max' or 'fraction', got {spec['mask_pooling']!r}")
    require(int(spec["batch_size"]) >= 1, f"encode spec: batch_size must be ≥ 1, got {spec['batch_size']}")
    require(int(spec["chunk"]) >= 1, f"encode spec: chunk must be ≥ 1, got {spec['chunk']}")
    batch_size = int(spec["batch_size"])
    device = resolve_device(args.device)
    model = load_tokenizer(args.tokenizer).to(device)
    out = Path(args.out)
    metadata = {"tokenizer": str(args.tokenizer), "posterior": "sample", "seed": str(spec["seed"])}
    # what the files' content depends on: a partial file of another tokenizer or spec is never resumed
    identity = {"tokenizer": file_sha256(Path(args.tokenizer) / "model.safetensors"), "spec": spec}
    train = open_image_split(args.train)
    val = open_image_split(args.val, need_masks=True)
    # images between two progress records: a killed job redoes at most this many per file
    common = dict(seed=spec["seed"], batch_size=batch_size, device=device, metadata=metadata,
                  chunk=int(spec["chunk"]))
    # LightningDiT's cache with encode.flip: each training image also encoded mirrored (its own noise
    # stream); the statistics stay those of the unflipped copy.
    encode_split_to_file(model, train, out / "train.safetensors", name="train", mirror_copy=bool(spec["flip"]),
                         fingerprint={**identity, "images": str(args.train)}, **common)
    encode_split_to_file(model, val, out / "val.safetensors", name="val",
                         mask_spec={"rule": spec["mask_pooling"], "threshold": spec["mask_threshold"]},
                         fingerprint={**identity, "images": str(args.val)}, **common)
    train_latents = memory_map_tensors(out / "train.safetensors", ["latents"])["latents"]
    mean, std = channel_statistics(train_latents)
    save_tensors(out / "stats.safetensors", {"mean": mean, "std": std}, metadata)
    log.info("encode: %d train and %d val latents of shape %s in %s", len(train), len(val),
             tuple(train_latents.shape[1:]), out)
    return 0


# ----------------------------------------------------------------------------- reconstruction

#: Images the decoder sees together. A float32 convolution's result can depend on how many images share
#: a call (a different kernel path), which moves a few uint8 pixels by one level: decoding in fixed blocks
#: aligned to the image index makes reconstructions — and rFID, SSIM, PSNR — independent of batch_size.
DECODE_BLOCK = 8


def aligned_batch_size(batch_size: int) -> int:
    """``batch_size`` rounded down to a multiple of :data:`DECODE_BLOCK` (at least one block)."""
    return max(DECODE_BLOCK, int(batch_size) // DECODE_BLOCK * DECODE_BLOCK)


def reconstruct(model, images, batch_size: int, device: str = "cpu"):
    """uint8 (N,H,W,3) → uint8 CPU reconstructions (N,H,W,3) decoded from the posterior mean."""
    import torch

    from ..data.splits import iterate_batches

    batch_size = aligned_batch_size(batch_size)
    with torch.no_grad():
        return torch.cat([_reconstruct_batch(model, torch.as_tensor(images[rows]), device)
                          for rows in iterate_batches(images.shape[0], batch_size)])


def _reconstruct_batch(model, originals, device: str):
    """uint8 (n,H,W,3) → uint8 CPU (n,H,W,3) through the posterior mean, the model on ``device``, in blocks
    of :data:`DECODE_BLOCK` images (the batch starts at a multiple of it)."""
    import torch

    from ..imaging import to_model_input, to_uint8

    blocks = []
    for start in range(0, originals.shape[0], DECODE_BLOCK):
        x = to_model_input(originals[start:start + DECODE_BLOCK]).to(device)
        blocks.append(to_uint8(model.decode(model.encode(x).mode())).cpu())
    return torch.cat(blocks)


def domain_features(feature_net, device: str = "cpu"):
    """uint8 (n,H,W,3) batch → domain-net ``features`` (n, F) on the CPU."""
    from ..imaging import to_model_input

    feature_net = feature_net.to(device)
    return lambda batch: feature_net.features(to_model_input(batch).to(device)).double().cpu()


def inception_features(net, device: str = "cpu"):
    """uint8 (n,H,W,3) batch → FID Inception pool3 features (n, 2048) on the CPU (TF1 resize on the CPU)."""
    net = net.to(device)
    return lambda batch: net.forward_preprocessed(net.preprocess(batch).to(device))["pool3"].double().cpu()


def feature_batches(feature_net, images, batch_size: int):
    """Domain-net ``features`` (N, F) of uint8 images (N,H,W,3) (any array-like that slices to batches)."""
    import torch

    from ..data.splits import iterate_batches

    extract = domain_features(feature_net)
    with torch.no_grad():
        return torch.cat([extract(torch.as_tensor(images[rows])) for rows in iterate_batches(images.shape[0], batch_size)])


def original_features(extractors: dict, images, batch_size: int) -> dict:
    """{name: features (N, F)} of the original images for every feature extractor, in one pass."""
    import torch

    from ..data.splits import iterate_batches
    from ..progress import progress

    features = {name: [] for name in extractors}
    count = images.shape[0]
    with torch.no_grad():
        for rows in progress(iterate_batches(count, batch_size), total=-(-count // batch_size), desc="originals"):
            batch = torch.as_tensor(images[rows])
            for name, extract in extractors.items():
                features[name].append(extract(batch))
    return {name: torch.cat(parts) for name, parts in features.items()}


def lpips_distances(lpips_net, device: str = "cpu"):
    """(originals, reconstructions) uint8 (n,H,W,3) batches → per-image LPIPS-VGG distances (n,) on [-1, 1]."""
    from ..imaging import to_model_input

    lpips_net = lpips_net.to(device)
    return lambda a, b: lpips_net(to_model_input(a).to(device), to_model_input(b).to(device)).double().cpu()


def reconstruction_metrics(model, images, feature_net, batch_size: int, extractors: dict | None = None,
                           references: dict | None = None, device: str = "cpu",
                           pair_scores: dict | None = None) -> dict[str, float]:
    """{"psnr", "ssim", "rfd"[, "rfid"]} of ``model`` on uint8 images (N,H,W,3) (posterior mean).

    Streams: each batch is reconstructed on ``device``, scored (per-image PSNR on uint8, SSIM with data
    range 1) and featurised, then dropped, so a 50,000-image memory-mapped val split never sits in
    memory. ``extractors`` maps a row name to a batch → (n, F) feature function (default: ``rfd`` from
    the domain net ``feature_net``); ``references`` holds the originals' features per name (computed
    when missing, so that several models can share one pass over the originals). ``pair_scores`` maps a
    row name to a per-image score of (originals, reconstructions), averaged over images (e.g. ``lpips``).
    """
    import numpy as np
    import torch

    from ..data.splits import iterate_batches
    from ..evaluation import feature_statistics, frechet_distance
    from ..evaluation.reconstruction import mean_psnr, psnr_uint8, ssim
    from ..progress import progress

    batch_size = aligned_batch_size(batch_size)  # reconstructions independent of the batch size
    extractors = extractors or {"rfd": domain_features(feature_net, device)}
    references = dict(references or {})
    missing = {name: f for name, f in extractors.items() if name not in references}
    if missing:
        references.update(original_features(missing, images, batch_size))
    to_unit = lambda batch: batch.permute(0, 3, 1, 2).double() / 255.0  # noqa: E731 - [0, 1] NCHW for SSIM
    psnr, ssim_values = [], []
    pair_scores = pair_scores or {}
    scores = {name: [] for name in pair_scores}
    features = {name: [] for name in extractors}
    count = images.shape[0]
    with torch.no_grad():
        for rows in progress(iterate_batches(count, batch_size), total=-(-count // batch_size), desc="reconstruct"):
            originals = torch.as_tensor(images[rows])
            reconstructions = _reconstruct_batch(model, originals, device)
            psnr.append(psnr_uint8(originals, reconstructions))
            ssim_values.append(ssim(to_unit(originals), to_unit(reconstructions), data_range=1.0))
            for name, extract in extractors.items():
                features[name].append(extract(reconstructions))
            for name, score in pair_scores.items():
                scores[name].append(score(originals, reconstructions))
    values = {"psnr": mean_psnr(np.concatenate(psnr)), "ssim": float(torch.cat(ssim_values).mean())}
    values.update({name: float(torch.cat(parts).mean()) for name, parts in scores.items()})
    for name in extractors:
        mu_ref, sigma_ref = feature_statistics(references[name])
        mu_rec, sigma_rec = feature_statistics(torch.cat(features[name]))
        values[name] = float(frechet_distance(mu_ref, sigma_ref, mu_rec, sigma_rec))
    return values


#: row name → (direction, description) of the reconstruction rows
RECONSTRUCTION_ROWS = {
    "psnr": ("higher", "uint8, data range 255"),
    "ssim": ("higher", "gaussian 11x11, sigma 1.5, [0, 1], data range 1"),
    "rfd": ("lower", "Frechet distance of domain-net features, originals vs reconstructions"),
    "rfid": ("lower", "rFID: Frechet distance of FID Inception-v3 pool3 features (TF1 resize to 299), "
                      "originals vs reconstructions"),
    "lpips": ("lower", "LPIPS-VGG v0.1 on [-1, 1], mean over images"),
}


def run_reconstruction(args: argparse.Namespace) -> int:
    import json
    import time

    from ..data.splits import open_image_split
    from ..devices import resolve_device
    from ..evaluation.commands import load_inception
    from ..teacher.domain_net import load_domain_classifier
    from ..io import provenance, write_parquet
    from ..progress import log
    from .factory import initial_tokenizer, load_tokenizer

    spec = resolve_spec(args.spec, RECONSTRUCTION_DEFAULTS, "reconstruction")
    batch_size = int(spec["batch_size"])
    device = resolve_device(args.device)
    images = open_image_split(args.data).images  # checked: uint8 (N, H, W, 3)
    extractors = {"rfd": domain_features(load_domain_classifier(args.feature_net), device)}
    if args.inception_weights:
        extractors["rfid"] = inception_features(load_inception(args), device)
    pair_scores = {}
    if args.lpips_weights:
        from .lpips import load_lpips_vgg

        pair_scores["lpips"] = lpips_distances(load_lpips_vgg(args.lpips_weights), device)
    trained = load_tokenizer(args.tokenizer).to(device)
    untrained = initial_tokenizer(trained.spec).eval().to(device)
    references = original_features(extractors, images, batch_size)
    params = json.dumps({"tokenizer": trained.spec.name, "posterior": "mean",
                         **{name: RECONSTRUCTION_ROWS[name][1] for name in ("psnr", "ssim", *pair_scores, *extractors)},
                         "untrained": "same config.json and seed, before training"}, sort_keys=True)
    rows = []
    for suffix, model in (("", trained), ("_untrained", untrained)):
        started = time.perf_counter()
        values = reconstruction_metrics(model, images, None, batch_size, extractors=extractors,
                                        references=references, device=device, pair_scores=pair_scores)
        seconds = time.perf_counter() - started
        log.info("reconstruction%s: %.1f s", suffix or " (trained)", seconds)
        for metric in ("psnr", "ssim", *pair_scores, *extractors):
            rows.append(result_row(metric + suffix, values[metric], RECONSTRUCTION_ROWS[metric][0], params,
                                   images.shape[0]))
    table = rows_frame(rows)
    write_parquet(table, args.out, provenance(trained.spec.to_dict(), tokenizer=str(args.tokenizer)))
    log.info("reconstruction: %s", {r["metric"]: round(r["value"], 4) for r in rows})
    return 0
