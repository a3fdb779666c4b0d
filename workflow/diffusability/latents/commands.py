"""``diffusability encode | import-latents``: the latents stage's commands.

- ``encode``: fixed-seed posterior samples of the train and val splits, val masks pooled to the
  latent grid, per-channel mean / unbiased std of the train latents (CONTRIBUTING.md "latents");
  the encoding itself is :mod:`diffusability.latents.encode`.
- ``import-latents``: check a latent directory encoded elsewhere against the study's tokenizer and
  copy it in (what is checked is documented in :mod:`diffusability.latents.importing`); trained diffusion
  models come in through ``train-diffusion --import-from``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import require
from ..specs import resolve_spec
from .spec import ENCODE_DEFAULTS, IMPORT_LATENTS_KEYS


def register(subparsers) -> None:
    """Add the latents stage's subcommands to the ``diffusability`` parser."""
    from ..specs import json_spec
    from ..devices import add_device_argument

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

    parser = subparsers.add_parser("import-latents", help="check and copy existing latents into a study",
                                   description="Check a latent directory (train/val/stats.safetensors) against "
                                               "the study's tokenizer and copy it to --out.")
    parser.add_argument("--source", required=True, type=Path, help="existing latent directory")
    parser.add_argument("--tokenizer", required=True, type=Path, help="the study's tokenizer directory (config.json)")
    parser.add_argument("--spec", required=True, type=json_spec,
                        help='JSON: {"image_size", "n_classes", "stats_tolerance"}')
    parser.add_argument("--out", required=True, type=Path, help="latent directory of the study")
    parser.set_defaults(func=run_import_latents)


def run_encode(args: argparse.Namespace) -> int:
    """Encode ``--train`` and ``--val`` with ``--tokenizer`` into ``--out`` (train/val/stats.safetensors)."""
    from ..data.splits import open_image_split
    from ..devices import resolve_device
    from ..io import file_sha256, memory_map_tensors, provenance_metadata, save_tensors
    from ..progress import log
    from .statistics import channel_statistics, fixed_normalization
    from ..tokenizers.factory import load_tokenizer
    from .encode import encode_split_to_file

    spec = resolve_spec(args.spec, ENCODE_DEFAULTS, "encode", positive=("batch_size", "chunk"))
    require(spec["mask_pooling"] in ("max", "fraction"),
            f"encode spec: mask_pooling must be 'max' or 'fraction', got {spec['mask_pooling']!r}")
    threshold = spec["mask_threshold"]
    require(isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 <= threshold <= 1,
            f"encode spec: mask_threshold must be a number in [0, 1], got {threshold!r}")
    require(isinstance(spec["seed"], int) and not isinstance(spec["seed"], bool),
            f"encode spec: seed must be an integer, got {spec['seed']!r}")
    fixed = None
    if spec["normalization"] is not None:  # checked against the tokenizer's channels before hours of encoding
        from ..io import read_json

        config_path = Path(args.tokenizer) / "config.json"
        channels = read_json(config_path).get("latent_channels") if config_path.is_file() else None
        require(isinstance(channels, int) and channels >= 1,
                f"{config_path}: 'latent_channels' must be a positive integer (needed by encode spec "
                f"normalization), got {channels!r}")
        fixed = fixed_normalization(spec["normalization"], channels)
    batch_size = int(spec["batch_size"])
    device = resolve_device(args.device)
    model = load_tokenizer(args.tokenizer).to(device)
    out = Path(args.out)
    # the provenance (inputs' hashes, code, device) is part of the header: a partial file written by other
    # code or on another device is not resumed
    metadata = {"tokenizer": str(args.tokenizer), "posterior": "sample", "seed": str(spec["seed"]),
                **provenance_metadata(spec)}
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
    if fixed is not None:
        # the study's normalisation (e.g. a released model's scaling factor) instead of the measured one
        log.info("encode: normalisation %s instead of the train latents' mean %s, std %s", spec["normalization"],
                 [round(v, 4) for v in mean.tolist()], [round(v, 4) for v in std.tolist()])
        require(fixed[0].shape == mean.shape, f"{args.tokenizer}: config.json says {fixed[0].shape[0]} latent channels "
                                              f"but the encoder wrote {mean.shape[0]}")
        mean, std = fixed
    save_tensors(out / "stats.safetensors", {"mean": mean, "std": std}, metadata)
    log.info("encode: %d train and %d val latents of shape %s in %s", len(train), len(val),
             tuple(train_latents.shape[1:]), out)
    return 0


def run_import_latents(args: argparse.Namespace) -> int:
    """Check the latents of ``--source`` against ``--tokenizer`` and copy them to ``--out``."""
    import math

    from .importing import import_latents
    from ..errors import reject_unknown_keys
    from ..progress import log

    spec = dict(args.spec)
    reject_unknown_keys(spec, IMPORT_LATENTS_KEYS, "import-latents spec")
    for key in ("image_size", "n_classes"):
        require(key in spec, f"import-latents spec: '{key}' is required")
        require(isinstance(spec[key], int) and not isinstance(spec[key], bool) and spec[key] >= 1,
                f"import-latents spec: '{key}' must be a positive integer, got {spec[key]!r}")
    tolerance = spec.get("stats_tolerance", 1e-3)
    require(isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool) and math.isfinite(tolerance)
            and tolerance >= 0, f"import-latents spec: 'stats_tolerance' must be a number >= 0, got {tolerance!r}")
    found = import_latents(args.source, args.out, args.tokenizer, spec["image_size"], spec["n_classes"],
                           float(tolerance))
    log.info("import-latents: %d train and %d val latents of (%d, %d, %d) from %s", found["train"], found["val"],
             found["channels"], found["side"], found["side"], args.source)
    return 0
