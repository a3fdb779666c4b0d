"""The ``prepare-data`` spec: a JSON object parsed into dataclasses, unknown keys rejected.

``{"seed": int, "source": "shapes"|"imagenet", "image_size": int, "n_train": int, "n_val": int,
"n_classes": int, "imagenet": {"train_dir": str, "val_dir": str, "masks_dir": str|null,
"max_bad_fraction": float, "cache_dir": str|null}}``
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import require

SOURCES = ("shapes", "imagenet")


@dataclass(frozen=True)
class ImagenetSpec:
    """Where ImageNet (and optionally ImageNet-S masks) live, and how strict to be."""

    train_dir: str | None = None        # train/<wnid>/*.JPEG; its sorted wnids define the labels
    val_dir: str | None = None          # val/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG
    masks_dir: str | None = None        # ImageNet-S validation-segmentation/<wnid>/*.png, or None
    mask_categories: str | None = None  # ImageNet-S category list (wnid per class id) → mask_label
    max_bad_fraction: float = 0.001     # unreadable images tolerated (skipped) up to this share
    cache_dir: str | None = None        # `datasets` cache; None = HF_HOME's default


@dataclass(frozen=True)
class DataSpec:
    """What ``prepare-data`` builds: train and val splits of one image source."""

    seed: int
    source: str = "shapes"
    image_size: int = 32
    n_train: int = 2000
    n_val: int = 500
    n_classes: int = 8
    imagenet: ImagenetSpec = field(default_factory=ImagenetSpec)


def _check_keys(obj: dict, cls: type, where: str) -> None:
    require(isinstance(obj, dict), f"{where}: expected a JSON object, got {type(obj).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    for key in obj:
        require(key in known, f"{where}: unknown key {key!r} (expected keys: {sorted(known)})")


def _check_int(value: Any, name: str, minimum: int) -> int:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
            f"spec key {name!r}: expected an integer >= {minimum}, got {value!r}")
    return value


def parse_data_spec(obj: dict) -> DataSpec:
    """Validate a ``prepare-data`` spec dict and return a :class:`DataSpec`.

    ``n_train``/``n_val`` are image counts; for ImageNet 0 means "every image available".
    """
    _check_keys(obj, DataSpec, "prepare-data spec")
    require("seed" in obj, "prepare-data spec: missing key 'seed'")
    values = dict(obj)
    _check_int(values["seed"], "seed", 0)
    source = values.get("source", "shapes")
    require(source in SOURCES, f"spec key 'source': expected one of {SOURCES}, got {source!r}")
    for name, minimum in (("image_size", 16), ("n_train", 0), ("n_val", 0), ("n_classes", 1)):
        if name in values:
            _check_int(values[name], name, minimum)
    raw_imagenet = values.pop("imagenet", None) or {}
    _check_keys(raw_imagenet, ImagenetSpec, "prepare-data spec key 'imagenet'")
    imagenet = ImagenetSpec(**raw_imagenet)
    fraction = imagenet.max_bad_fraction
    require(isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 <= fraction <= 1,
            f"spec key 'imagenet.max_bad_fraction': expected a number in [0, 1], got {fraction!r}")
    for name in ("train_dir", "val_dir", "masks_dir", "cache_dir"):
        value = getattr(imagenet, name)
        require(value is None or isinstance(value, str),
                f"spec key 'imagenet.{name}': expected a path string or null, got {value!r}")
    if source == "imagenet":
        require(imagenet.train_dir is not None and imagenet.val_dir is not None,
                "spec: source 'imagenet' needs 'imagenet.train_dir' and 'imagenet.val_dir'")
    return DataSpec(**values, imagenet=imagenet)


#: Keys of the ``imagenet-shards`` spec and their defaults (config.shards_spec writes them per split); the keys
#: it shares with ``prepare-data``'s ImageNet spec take that dataclass's defaults (one source)
SHARD_SPEC_DEFAULTS = {"image_size": 256, "shard_size": 1000, "workers": 1,
                       "max_bad_fraction": ImagenetSpec.max_bad_fraction, "split": "train", "seed": 0,
                       "n_classes": None, "n_images": 0, "masks_dir": ImagenetSpec.masks_dir,
                       "mask_categories": ImagenetSpec.mask_categories, "only_masked": False}
