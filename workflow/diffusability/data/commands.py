"""``diffusability prepare-data``: write the train and val image splits of the configured source.

Each split is one ``.safetensors`` file (CONTRIBUTING.md "image split"): ``images`` uint8
(N, H, W, 3), ``labels`` int64 (N,), ``masks`` bool (N, H, W) and, for ImageNet, ``mask_valid``
bool (N, H, W); metadata ``n_classes``, ``image_size``, ``source``, ``split``, ``seed``.
"""

from __future__ import annotations

import argparse

from ..progress import log
from ..seeding import derive_seed
from .spec import SHARD_SPEC_DEFAULTS


def register(subparsers) -> None:
    """Add the data stage's subcommands to the ``diffusability`` parser."""
    from ..specs import json_spec

    parser = subparsers.add_parser(
        "prepare-data", help="write train/val image splits (shapes or ImageNet)",
        description="Write the train and val image splits described by --spec.")
    parser.add_argument("--spec", type=json_spec, required=True,
                        help='JSON: {"seed", "source": "shapes"|"imagenet", "image_size", "n_train", '
                             '"n_val", "n_classes", "imagenet": {...}}')
    parser.add_argument("--out-train", required=True, help="train split (.safetensors)")
    parser.add_argument("--out-val", required=True, help="val split (.safetensors)")
    parser.set_defaults(func=run_prepare_data)

    parser = subparsers.add_parser(
        "imagenet-manifest", help="list an ImageNet folder tree with labels and SHA-256 (Parquet)",
        description="List IMAGE_ROOT/<wnid>/* with labels from the sorted wnids of --train-dir.")
    parser.add_argument("--image-root", required=True, help="folder with <wnid>/*.JPEG (train or val)")
    parser.add_argument("--train-dir", required=True, help="train folder whose sorted wnids define labels")
    parser.add_argument("--out", required=True, help="manifest (.parquet)")
    parser.add_argument("--workers", type=int, default=1, help="processes for hashing")
    parser.add_argument("--cache-dir", default=None, help="datasets cache (default: HF_HOME)")
    # the image folders are not hashed into the provenance (a million files): the manifest it writes holds
    # every image's SHA-256, and the manifest is what the later stages name as their input
    parser.set_defaults(func=run_imagenet_manifest, not_inputs=("image_root", "train_dir", "cache_dir"))

    parser = subparsers.add_parser(
        "imagenet-shards", help="center-crop a manifest's images into memory-mappable .npy shards",
        description="Write (or resume) uint8 NHWC shards of the manifest's images in --out-dir.")
    parser.add_argument("--manifest", required=True, help="manifest (.parquet) from imagenet-manifest")
    parser.add_argument("--out-dir", required=True, help="shard directory (index.json written last)")
    parser.add_argument("--spec", type=json_spec, required=True,
                        help='JSON: {"image_size", "shard_size", "workers", "max_bad_fraction", "split", "seed", '
                             '"n_classes", "n_images" (0 = all), "masks_dir", "mask_categories", "only_masked"}')
    parser.set_defaults(func=run_imagenet_shards)


def split_seed(seed: int, split: str) -> int:
    """The seed of one split's stream; train and val never share images."""
    return derive_seed(seed, "data-split", split)


def describe_split(name: str, split: dict, n_classes: int) -> str:
    """One log line: counts, class balance and foreground share of a split."""
    import numpy as np

    labels = split["labels"]
    counts = np.bincount(labels, minlength=n_classes) if len(labels) else np.zeros(n_classes, int)
    fg = float(split["masks"].mean()) if split["masks"].size else float("nan")
    return (f"{name}: {len(labels)} images, {n_classes} classes, per-class count "
            f"min {counts.min()} / max {counts.max()}, foreground share {fg:.3f}")


def run_prepare_data(args: argparse.Namespace) -> int:
    from ..io import provenance_metadata, save_tensors
    from .spec import parse_data_spec

    spec = parse_data_spec(args.spec)
    if spec.source == "shapes":
        from .shapes import generate_shapes

        splits = {name: generate_shapes(count, spec.image_size, split_seed(spec.seed, name), spec.n_classes)
                  for name, count in (("train", spec.n_train), ("val", spec.n_val))}
    else:
        from .imagenet import prepare_imagenet_splits

        splits = prepare_imagenet_splits(spec)
    for name, path in (("train", args.out_train), ("val", args.out_val)):
        split = splits[name]
        log.info(describe_split(name, split, spec.n_classes))
        metadata = {"n_classes": str(spec.n_classes), "image_size": str(spec.image_size),
                    "source": spec.source, "split": name, "seed": str(spec.seed), **provenance_metadata(args.spec)}
        save_tensors(path, split, metadata)
    return 0


def run_imagenet_manifest(args: argparse.Namespace) -> int:
    from ..errors import require
    from .shards import build_manifest, save_manifest

    require(args.workers >= 1, f"--workers {args.workers}: expected >= 1")
    manifest = build_manifest(args.image_root, args.train_dir, workers=args.workers, cache_dir=args.cache_dir)
    save_manifest(manifest, args.out, args.image_root)
    log.info("manifest: %d images, %d classes, %.1f GB", len(manifest), manifest["wnid"].nunique(),
             manifest["bytes"].sum() / 1e9)
    return 0


def run_imagenet_shards(args: argparse.Namespace) -> int:
    from ..errors import reject_unknown_keys, require
    from .shards import read_manifest, select_rows, write_shards

    spec = dict(args.spec)
    reject_unknown_keys(spec, SHARD_SPEC_DEFAULTS, "imagenet-shards spec")
    values = {**SHARD_SPEC_DEFAULTS, **spec}
    for key in ("image_size", "shard_size", "workers"):
        require(isinstance(values[key], int) and values[key] >= 1,
                f"imagenet-shards spec key {key!r}: expected an integer >= 1, got {values[key]!r}")
    require(isinstance(values["n_images"], int) and values["n_images"] >= 0,
            f"imagenet-shards spec key 'n_images': expected an integer >= 0 (0 = all), got {values['n_images']!r}")
    fraction = values["max_bad_fraction"]
    require(isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 <= fraction <= 1,
            f"imagenet-shards spec key 'max_bad_fraction': expected a number in [0, 1], got {fraction!r}")
    require(not values["only_masked"] or values["masks_dir"],
            "imagenet-shards spec: only_masked needs masks_dir")
    manifest = read_manifest(args.manifest)
    keep_stems = None
    if values["only_masked"]:
        from .imagenet_s import index_masks

        keep_stems = set(index_masks(values["masks_dir"]))
    chosen = select_rows(manifest, n_classes=values["n_classes"], n_images=values["n_images"],
                         seed=values["seed"], name=f"n_{values['split']}",  # the subset prepare-data picks
                         keep_stems=keep_stems)
    require(len(chosen) >= 1, f"{args.manifest}: no manifest rows to shard ({len(manifest)} rows, none selected)")
    log.info("imagenet-shards: %d of %d manifest rows selected", len(chosen), len(manifest))
    index = write_shards(chosen, args.out_dir, image_size=values["image_size"], shard_size=values["shard_size"],
                         workers=values["workers"], max_bad_fraction=fraction, masks_dir=values["masks_dir"],
                         mask_categories=values["mask_categories"], n_classes=values["n_classes"])
    log.info("shards: %d images in %d shards (%d unreadable skipped)", index["n_images"], index["n_shards"],
             len(index["bad"]))
    return 0
