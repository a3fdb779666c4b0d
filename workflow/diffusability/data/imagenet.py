"""ImageNet image folders → center-cropped uint8 arrays with labels (and ImageNet-S masks).

Layouts (the real ones): ``train/<wnid>/*.JPEG`` and ``val/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG``.
Labels are the positions of the wnids in the **sorted** list of train folder names, so the
same wnid gets the same label in both splits. Files are listed with the ``datasets``
``imagefolder`` builder, offline (docs/architecture.md §8), and decoded here with
PIL so that an unreadable file is reported by path instead of failing the whole load.

Geometry is ADM's ``center_crop_arr`` (docs/models.md §4.1), used by ADM, DiT, SiT, LightningDiT
and REPA and by the ADM reference statistics; label maps get the same geometry with nearest
resampling so that masks stay aligned with their images.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DiffusabilityError, require
from ..progress import log, progress
from ..seeding import numpy_rng


# ----------------------------------------------------------------------------- geometry

def adm_center_crop(image, size: int):
    """ADM center crop of a PIL image → PIL image ``size×size`` (same mode as the input).

    1. While the short side is >= 2·size, halve both sides (integer division) with BOX.
    2. Resize with BICUBIC so the short side is ``size``; the long side is rounded.
    3. Crop ``size×size`` at offsets ``((H − size)//2, (W − size)//2)``.
    """
    from PIL import Image

    require(isinstance(size, int) and size > 0, f"adm_center_crop size={size!r}: expected a positive integer")
    require(min(image.size) > 0, f"adm_center_crop: empty image of size {image.size}")
    # Halving with a box filter first (as ADM does) anti-aliases large downscales cheaply.
    while min(image.size) >= 2 * size:
        image = image.resize((image.size[0] // 2, image.size[1] // 2), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)), resample=Image.BICUBIC)
    width, height = image.size
    top, left = (height - size) // 2, (width - size) // 2
    return image.crop((left, top, left + size, top + size))


def adm_center_crop_labels(ids: np.ndarray, size: int) -> np.ndarray:
    """The ADM center-crop geometry on an int label map (H, W) → (size, size), NEAREST only.

    Bicubic or box filtering would invent label values between classes; nearest keeps every
    output pixel equal to one input pixel while following the image's geometry step by step.
    """
    from PIL import Image

    ids = np.asarray(ids)
    require(ids.ndim == 2 and np.issubdtype(ids.dtype, np.integer),
            f"adm_center_crop_labels: expected an integer (H, W) array, got {ids.dtype} {tuple(ids.shape)}")
    require(ids.size > 0 and (ids.min() >= -(2**31)) and (ids.max() < 2**31),
            "adm_center_crop_labels: labels must fit in int32")
    labels = Image.fromarray(ids.astype(np.int32))  # PIL mode "I": 32-bit integer pixels
    require(labels.mode == "I", f"adm_center_crop_labels: PIL read the labels as mode {labels.mode}")
    while min(labels.size) >= 2 * size:
        labels = labels.resize((labels.size[0] // 2, labels.size[1] // 2), resample=Image.NEAREST)
    scale = size / min(labels.size)
    labels = labels.resize((round(labels.size[0] * scale), round(labels.size[1] * scale)), resample=Image.NEAREST)
    out = np.asarray(labels)
    top, left = (out.shape[0] - size) // 2, (out.shape[1] - size) // 2
    return out[top:top + size, left:left + size].astype(ids.dtype, copy=True)


# ----------------------------------------------------------------------------- listing

@dataclass
class FolderListing:
    """Files of one ``<root>/<wnid>/*`` tree: parallel lists of paths and wnids."""

    paths: list[str] = field(default_factory=list)
    wnids: list[str] = field(default_factory=list)


def list_image_folder(root: str | os.PathLike, cache_dir: str | None = None) -> FolderListing:
    """List ``root/<wnid>/*`` images with ``datasets``' imagefolder builder (paths only, no decoding)."""
    root = Path(root)
    require(root.is_dir(), f"{root}: image folder not found (expected <wnid>/*.JPEG inside)")
    from .hf_dataset import offline_datasets, quiet_datasets

    datasets = offline_datasets()
    try:
        with quiet_datasets(datasets):  # local files: no "Downloading data" bars in the log
            loaded = datasets.load_dataset("imagefolder", data_dir=str(root), cache_dir=cache_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise DiffusabilityError(f"{root}: could not list images with datasets' imagefolder ({exc})") from exc
    listing = FolderListing()
    for split in sorted(loaded):
        table = loaded[split].cast_column("image", datasets.Image(decode=False))
        for start in range(0, len(table), 4096):  # slicing in batches; row access is slow
            for item in table[start:start + 4096]["image"]:
                path = Path(item["path"])
                listing.paths.append(str(path))
                listing.wnids.append(path.parent.name)
    order = np.argsort(listing.paths, kind="stable")  # a stable order independent of the builder
    listing.paths = [listing.paths[i] for i in order]
    listing.wnids = [listing.wnids[i] for i in order]
    require(listing.paths, f"{root}: no images found (expected <wnid>/*.JPEG inside)")
    return listing


def class_wnids(train_root: str | os.PathLike) -> list[str]:
    """Sorted wnid folder names of the train tree: wnid ``k`` has label ``k``."""
    root = Path(train_root)
    require(root.is_dir(), f"{root}: train folder not found")
    wnids = sorted(p.name for p in root.iterdir() if p.is_dir())
    require(wnids, f"{root}: no <wnid> class folders found")
    return wnids


# ----------------------------------------------------------------------------- decoding

def open_image(path: str | os.PathLike):
    """A PIL image of a file path, or of a row of an on-disk Hugging Face dataset (``<dir>::<row>::<name>``)."""
    import io

    from PIL import Image

    from .hf_dataset import is_row_reference, read_row_bytes

    if is_row_reference(str(path)):
        return Image.open(io.BytesIO(read_row_bytes(str(path))))
    return Image.open(path)


def load_center_cropped(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode one image (file or dataset row), convert to RGB, ADM center crop → uint8 (size, size, 3)."""
    with open_image(path) as image:
        image.load()
        rgb = image.convert("RGB")
    return np.asarray(adm_center_crop(rgb, size), dtype=np.uint8)


def load_cropped_mask_ids(mask_path: str | os.PathLike, image_path: str, size: int) -> np.ndarray:
    """ImageNet-S class ids of one image's mask → int32 (size, size), aligned with the image's crop."""
    from .imagenet_s import read_mask_ids

    ids = read_mask_ids(mask_path)
    with open_image(image_path) as image:
        width, height = image.size
    if ids.shape != (height, width):
        raise ValueError(f"mask {mask_path} is {ids.shape[1]}x{ids.shape[0]}, image is {width}x{height}")
    return adm_center_crop_labels(ids, size)


_DECODE_ERRORS = (OSError, SyntaxError, ValueError)  # PIL raises these for truncated/invalid files


def load_images(paths: list[str], labels: list[int], size: int, *, mask_paths: list[Path | None] | None = None,
                max_bad_fraction: float = 0.001, desc: str = "images", mask_lookup: np.ndarray | None = None) -> dict:
    """Decode and center-crop ``paths``; skip unreadable files up to ``max_bad_fraction``.

    Returns ``{"images": uint8 (N, size, size, 3), "labels": int64 (N,), "masks": bool (N, size, size),
    "mask_valid": bool (N, size, size), "mask_label": int64 (N,), "bad": list[(path, reason)]}`` over the
    readable images. Images without a mask get ``masks`` and ``mask_valid`` all False (nothing known).
    ``mask_label`` is the ImageNet-1k label of a mask's dominant ImageNet-S class through
    ``mask_lookup`` (:func:`~diffusability.data.imagenet_s.class_id_to_label`), −1 when unknown.
    """
    from .imagenet_s import dominant_label, foreground_and_valid

    require(len(paths) == len(labels), "load_images: paths and labels differ in length")
    n = len(paths)
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size), dtype=bool)
    valid = np.zeros((n, size, size), dtype=bool)
    mask_label = np.full(n, -1, dtype=np.int64)
    keep = np.ones(n, dtype=bool)
    bad: list[tuple[str, str]] = []
    for i in progress(range(n), total=n, desc=desc, unit="img"):
        try:
            images[i] = load_center_cropped(paths[i], size)
            if mask_paths is not None and mask_paths[i] is not None:
                ids = load_cropped_mask_ids(mask_paths[i], paths[i], size)
                masks[i], valid[i] = foreground_and_valid(ids)
                if mask_lookup is not None:
                    mask_label[i] = dominant_label(ids, mask_lookup)
        except _DECODE_ERRORS as exc:
            keep[i] = False
            bad.append((paths[i], f"{type(exc).__name__}: {exc}"))
            log.warning("unreadable image skipped: %s (%s: %s)", paths[i], type(exc).__name__, exc)
    if n and len(bad) / n > max_bad_fraction:
        listed = "; ".join(f"{p} ({why})" for p, why in bad[:10])
        raise DiffusabilityError(
            f"{len(bad)} of {n} {desc} unreadable ({len(bad) / n:.4%} > max_bad_fraction "
            f"{max_bad_fraction:.4%}): {listed}{' …' if len(bad) > 10 else ''}")
    return {"images": images[keep], "labels": np.asarray(labels, dtype=np.int64)[keep],
            "masks": masks[keep], "mask_valid": valid[keep], "mask_label": mask_label[keep], "bad": bad}


# ----------------------------------------------------------------------------- splits

def select_subset(count: int, available: int, seed: int, name: str) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``count`` items (all of them if count == 0)."""
    require(count <= available, f"spec key {name!r}: asks for {count} images, only {available} available")
    if count == 0 or count == available:
        return np.arange(available)
    return np.sort(numpy_rng(seed, "imagenet-subset", name).permutation(available)[:count])


def prepare_imagenet_splits(spec) -> dict:
    """Train and val splits of ImageNet per a :class:`~diffusability.data.spec.DataSpec`.

    Classes are the first ``n_classes`` sorted train wnids. With ``imagenet.masks_dir`` the val
    split keeps only images that have an ImageNet-S mask (joined by file stem).
    Returns ``{"train": split, "val": split}`` with the arrays of :func:`load_images` (no ``bad``).
    """
    cfg = spec.imagenet
    from .hf_dataset import is_hf_dataset

    for folder in (cfg.train_dir, cfg.val_dir):
        require(not is_hf_dataset(folder), f"{folder}: an on-disk Hugging Face dataset is read through "
                                           "data.imagenet.storage: shards (the in-memory route lists image folders)")
    wnids = class_wnids(cfg.train_dir)
    require(spec.n_classes <= len(wnids),
            f"spec key 'n_classes': {spec.n_classes} requested, {cfg.train_dir} has {len(wnids)} classes")
    label_of = {wnid: k for k, wnid in enumerate(wnids[:spec.n_classes])}
    mask_index = None
    if cfg.masks_dir is not None:
        from .imagenet_s import index_masks

        mask_index = index_masks(cfg.masks_dir)
    mask_lookup = None
    if cfg.masks_dir is not None and cfg.mask_categories is not None:
        from .imagenet_s import class_id_to_label, read_categories

        mask_lookup = class_id_to_label(read_categories(cfg.mask_categories), {w: k for k, w in enumerate(wnids)})

    splits = {}
    for name, root, count in (("train", cfg.train_dir, spec.n_train), ("val", cfg.val_dir, spec.n_val)):
        listing = list_image_folder(root, cfg.cache_dir)
        unknown = sorted(set(listing.wnids) - set(wnids))
        require(not unknown, f"{root}: class folders not in the train tree: {unknown[:5]}")
        chosen = [i for i, w in enumerate(listing.wnids) if w in label_of]
        if name == "val" and mask_index is not None:
            chosen = [i for i in chosen if Path(listing.paths[i]).stem in mask_index]
            require(chosen, f"{root}: no val image has an ImageNet-S mask in {cfg.masks_dir}")
        picked = [chosen[i] for i in select_subset(count, len(chosen), spec.seed, f"n_{name}")]
        paths = [listing.paths[i] for i in picked]
        labels = [label_of[listing.wnids[i]] for i in picked]
        mask_paths = ([mask_index.get(Path(p).stem) for p in paths]
                      if (name == "val" and mask_index is not None) else None)
        split = load_images(paths, labels, spec.image_size, mask_paths=mask_paths,
                            max_bad_fraction=cfg.max_bad_fraction, desc=f"{name} images",
                            mask_lookup=mask_lookup if name == "val" else None)
        log.info("%s: %d images read, %d unreadable skipped", name, len(split["labels"]), len(split["bad"]))
        split.pop("bad")
        splits[name] = split
    return splits
