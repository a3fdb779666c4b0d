"""One reader for every image split, whatever its storage.

A split is either

- a ``.safetensors`` file written by ``prepare-data`` (the embedded default, ImageNet subsets that
  fit in memory): read whole, or
- a directory of memory-mapped ImageNet shards written by ``imagenet-shards`` (named by its
  ``index.json``): read lazily, so 1.28 M training images never have to be in memory at once.

Both come back as an :class:`ImageSplit` whose ``images`` (uint8 (N, S, S, 3)) and optional
``masks`` / ``mask_valid`` (bool (N, S, S)) support ``len``, ``.shape``, ``x[i]``, ``x[a:b]`` and
``x[index_array]`` — numpy arrays for a file, :class:`~diffusability.data.shards.ConcatenatedArrays`
for shards — so every stage reads batches the same way (:func:`iterate_batches`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import require


@dataclass
class ImageSplit:
    """Images, labels and (optionally) foreground masks of one split.

    images: uint8 (N, S, S, 3) array-like; labels: int64 (N,) numpy; masks / mask_valid: bool
    (N, S, S) array-likes or None; n_classes: label count (0 when unknown); path: where it was read.
    """

    images: Any
    labels: np.ndarray
    masks: Any = None
    mask_valid: Any = None
    n_classes: int = 0
    path: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])


def is_shard_index(path: str | os.PathLike) -> bool:
    """True for a shard directory or its ``index.json``."""
    path = Path(path)
    return path.name == "index.json" or (path.is_dir() and (path / "index.json").is_file())


def open_image_split(path: str | os.PathLike, *, need_masks: bool = False) -> ImageSplit:
    """Open a split (``.safetensors`` file, shard directory or its ``index.json``); see the module doc.

    Raises :class:`~diffusability.errors.DiffusabilityError` naming the path when it is missing, of an
    unknown kind, lacks labels, holds images that are not uint8 (N, S, S, 3), or lacks masks when
    ``need_masks`` is set.
    """
    path = Path(path)
    if is_shard_index(path):
        from .shards import ShardedImages

        shards = ShardedImages(path)
        split = ImageSplit(shards.images, shards.labels, shards.masks, shards.mask_valid, shards.n_classes,
                           str(path))
    else:
        require(path.suffix == ".safetensors",
                f"{path}: expected an image split (.safetensors) or a shard directory's index.json")
        from ..io import load_tensors
        from safetensors import safe_open

        require(path.is_file(), f"{path}: file not found")
        from ..io import reading
        with reading(path, "safetensors file"), safe_open(str(path), framework="pt") as handle:
            metadata, available = dict(handle.metadata() or {}), set(handle.keys())
        require("images" in available and "labels" in available,
                f"{path}: an image split needs 'images' and 'labels' (has {sorted(available)})")
        arrays = {k: v.numpy() for k, v in load_tensors(path).items()}
        require(np.issubdtype(arrays["labels"].dtype, np.integer),
                f"{path}: labels must be integer, got dtype {arrays['labels'].dtype}")
        split = ImageSplit(arrays["images"], arrays["labels"].astype(np.int64), arrays.get("masks"),
                           arrays.get("mask_valid"), int(metadata.get("n_classes", 0)), str(path))
    shape = tuple(split.images.shape)
    require(np.dtype(split.images.dtype) == np.uint8 and len(shape) == 4 and shape[-1] == 3,
            f"{path}: images must be uint8 (N, H, W, 3), got {split.images.dtype} {shape}")
    require(split.labels.shape == (shape[0],), f"{path}: {len(split.labels)} labels for {shape[0]} images")
    require(shape[0] >= 1, f"{path}: no images")
    if need_masks:
        require(split.masks is not None, f"{path}: has no foreground masks (the val split needs them)")
    return split


def iterate_batches(count: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices [start, start + batch_size) covering ``range(count)``."""
    require(batch_size >= 1, f"batch size must be >= 1, got {batch_size}")
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


def check_uint8_images(images, name: str) -> np.ndarray:
    """Validate a uint8 (N, H, W, 3) image batch and return it as a numpy array."""
    from .shards import ConcatenatedArrays

    if not isinstance(images, ConcatenatedArrays):  # memory-mapped shards stay lazy: read batch by batch
        images = np.asarray(images)
    require(images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3,
            f"{name}: expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    require(images.shape[0] >= 1, f"{name}: no images")
    return images


def read_split_metadata(path) -> dict:
    """String metadata of a split (``n_classes``, ``image_size``, …): a ``.safetensors`` file's metadata,
    a shard index's counts; {} for .npz."""
    from safetensors import safe_open

    if is_shard_index(path):
        from .shards import ShardedImages

        shards = ShardedImages(path)
        return {"n_classes": str(shards.n_classes), "image_size": str(shards.image_size)}
    if Path(path).suffix != ".safetensors":
        return {}
    from ..io import reading
    with reading(path, "safetensors file"), safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def load_images(path, keys=("images", "arr_0")):
    """uint8 (N, H, W, 3) images of a split or sample file, plus its labels (or None)."""
    from ..io import load_arrays

    if is_shard_index(path):  # a full-scale ImageNet split: memory-mapped, read batch by batch
        split = open_image_split(path)
        return check_uint8_images(split.images, f"{path}: images"), split.labels
    arrays = load_arrays(path)
    key = next((k for k in keys if k in arrays), None)
    require(key is not None, f"{path}: has no image array (expected one of {list(keys)}, found {sorted(arrays)})")
    images = check_uint8_images(arrays[key], f"{path}: {key}")
    labels = arrays.get("labels")
    if labels is not None:
        require(np.issubdtype(labels.dtype, np.integer), f"{path}: labels must be integer, got dtype {labels.dtype}")
        require(labels.shape == (len(images),), f"{path}: labels shape {labels.shape} does not match {len(images)} images")
    return images, labels
