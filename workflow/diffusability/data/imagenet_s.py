"""ImageNet-S segmentation masks (LUSSeg/ImageNet-S, docs/models.md §4.3).

A mask is an RGB PNG at the original image resolution, stored as
``validation-segmentation/<wnid>/ILSVRC2012_val_XXXXXXXX.png`` beside the val image of the same
stem. The class id of a pixel is ``R + 256·G``: 0 = other/background, 1000 = ignore (uncertain
boundary), 1..919 = an ImageNet-S class. Foreground is ``id ∉ {0, 1000}``; ignore pixels are
marked not valid so that area fractions can exclude them (docs/metrics.md §0.4).

Masks go through the same ADM center crop as their images, with nearest resampling
(:func:`diffusability.data.imagenet.adm_center_crop_labels`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import require

BACKGROUND_ID = 0
IGNORE_ID = 1000


def decode_imagenet_s_mask(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB mask → int32 (H, W) class ids ``R + 256·G`` (B is unused)."""
    rgb = np.asarray(rgb)
    require(rgb.ndim == 3 and rgb.shape[-1] in (3, 4) and rgb.dtype == np.uint8,
            f"ImageNet-S mask: expected uint8 (H, W, 3), got {rgb.dtype} {tuple(rgb.shape)}")
    return rgb[..., 0].astype(np.int32) + 256 * rgb[..., 1].astype(np.int32)


def foreground_and_valid(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int (H, W) ids → (foreground bool (H, W): id ∉ {0, 1000}, valid bool (H, W): id != 1000)."""
    valid = ids != IGNORE_ID
    return valid & (ids != BACKGROUND_ID), valid


def index_masks(masks_dir: str | os.PathLike) -> dict[str, Path]:
    """Map file stem → mask path for every ``<wnid>/*.png`` under ``masks_dir``.

    Stems are unique in ImageNet val (``ILSVRC2012_val_XXXXXXXX``); a duplicate is an error
    because it would make the image ↔ mask join ambiguous.
    """
    root = Path(masks_dir)
    require(root.is_dir(), f"imagenet.masks_dir {root}: not a directory")
    index: dict[str, Path] = {}
    for path in sorted(root.glob("*/*.png")):
        require(path.stem not in index,
                f"imagenet.masks_dir: two masks share the stem {path.stem!r}: {index.get(path.stem)} and {path}")
        index[path.stem] = path
    require(index, f"imagenet.masks_dir {root}: no <wnid>/*.png masks found")
    return index


def read_mask_ids(path: str | os.PathLike) -> np.ndarray:
    """Read an ImageNet-S PNG and decode it to int32 (H, W) class ids."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    return decode_imagenet_s_mask(rgb)


def read_categories(path: str | os.PathLike) -> list[str]:
    """The wnids of an ImageNet-S variant in class-id order (id k ↔ line k, from 1).

    The file is the variant's category list of the LUSSeg/ImageNet-S repository (e.g.
    ``data/categories/ImageNetS_categories_im919.txt``): one wnid per line, the first word of a line
    being the wnid. It cannot be derived from the mask folders, because ImageNet-S919 merges five
    pairs of ImageNet classes (e.g. n04356056 → n04355933) whose images keep their own folders.
    """
    path = Path(path)
    require(path.is_file(), f"imagenet.mask_categories {path}: file not found")
    wnids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    require(wnids, f"imagenet.mask_categories {path}: no wnids")
    bad = [w for w in wnids if not (w.startswith("n") and w[1:].isdigit())]
    require(not bad, f"imagenet.mask_categories {path}: not wnids: {bad[:3]}")
    require(len(set(wnids)) == len(wnids), f"imagenet.mask_categories {path}: duplicate wnids")
    return wnids


def class_id_to_label(categories: list[str], label_of: dict[str, int]) -> np.ndarray:
    """int64 lookup (IGNORE_ID + 1,): ImageNet-S class id → ImageNet-1k label, −1 for 0, 1000 and unused ids.

    ``label_of`` maps a wnid to its ImageNet-1k label (positions in the sorted train wnids). An
    ImageNet-S category whose wnid is not among ``label_of`` (a class outside the study) maps to −1.
    """
    require(len(categories) < IGNORE_ID,
            f"ImageNet-S categories: {len(categories)} classes leave no room below the ignore id {IGNORE_ID}")
    lookup = np.full(IGNORE_ID + 1, -1, dtype=np.int64)
    for class_id, wnid in enumerate(categories, start=1):
        lookup[class_id] = label_of.get(wnid, -1)
    return lookup


def dominant_label(ids: np.ndarray, lookup: np.ndarray) -> int:
    """ImageNet-1k label of the most frequent ImageNet-S class among the foreground pixels of int
    (H, W) ``ids``; −1 when no pixel is foreground or the class maps to no label."""
    foreground = ids[(ids != BACKGROUND_ID) & (ids != IGNORE_ID)]
    if foreground.size == 0:
        return -1
    require(int(foreground.max()) < len(lookup), f"ImageNet-S mask: class id {int(foreground.max())} out of range")
    counts = np.bincount(foreground, minlength=1)
    return int(lookup[int(np.argmax(counts))])
