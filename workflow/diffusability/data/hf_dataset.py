"""ImageNet as an on-disk Hugging Face dataset (``Dataset.save_to_disk``), the alternative to image folders.

A folder with ``dataset_info.json`` and ``state.json`` (one split, e.g. ``imagenet-1k``'s train saved to
disk) holds an ``image`` column (the encoded file bytes, and usually the original file name) and a
``label`` column (``ClassLabel``). Its images are addressed as *row references* of the form
``<dataset folder>::<row>::<file name>``, so that a manifest, its shards and the ImageNet-S join (by file
stem) treat them like file paths. Nothing is decoded while listing; a shard worker reads the bytes of
its rows from the memory-mapped Arrow files. Read through ``data.imagenet.storage: shards``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from pathlib import Path

from ..errors import require

SEPARATOR = "::"


def offline_datasets():
    """Import ``datasets`` with the hub switched off (nothing may be downloaded at run time)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    return datasets


@contextlib.contextmanager
def quiet_datasets(datasets):
    """``datasets``' progress bars and info/warning logs off, restored after.

    Listing or opening local files goes through the hub machinery, which reports "Downloading data"
    and "Generating train split" bars although nothing is downloaded; in a job log they are noise.
    """
    bars = datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars:
            datasets.enable_progress_bars()


def is_hf_dataset(root: str | os.PathLike) -> bool:
    """True for a ``save_to_disk`` folder (``dataset_info.json`` and ``state.json``)."""
    root = Path(root)
    return (root / "dataset_info.json").is_file() and (root / "state.json").is_file()


def is_row_reference(path: str) -> bool:
    return SEPARATOR in str(path)


def row_reference(root: str | os.PathLike, row: int, name: str) -> str:
    return f"{Path(root)}{SEPARATOR}{row}{SEPARATOR}{name}"


def parse_row_reference(reference: str) -> tuple[str, int, str]:
    """``<root>::<row>::<name>`` → (root, row, name)."""
    root, row, name = str(reference).rsplit(SEPARATOR, 2)
    return root, int(row), name


def image_stem(path: str) -> str:
    """The file stem of an image path or of a row reference's file name (the ImageNet-S join key)."""
    name = parse_row_reference(path)[2] if is_row_reference(path) else str(path)
    return Path(name).stem


@functools.lru_cache(maxsize=4)
def _open(root: str):
    """The dataset at ``root`` with undecoded images (cached per process: workers reuse the memory map)."""
    datasets = offline_datasets()
    with quiet_datasets(datasets):  # a local save_to_disk folder: no progress bars in the log
        dataset = datasets.load_from_disk(root)
    require(isinstance(dataset, datasets.Dataset),
            f"{root}: expected one split saved with Dataset.save_to_disk, got a {type(dataset).__name__}")
    for column in ("image", "label"):
        require(column in dataset.column_names, f"{root}: the dataset has no {column!r} column "
                                                f"(has {dataset.column_names})")
    return dataset.cast_column("image", datasets.Image(decode=False))


def label_names(root: str | os.PathLike) -> list[str] | None:
    """The ``ClassLabel`` names of the dataset's labels (wnids for a wnid-named dataset), or None."""
    feature = _open(str(Path(root))).features["label"]
    return list(feature.names) if hasattr(feature, "names") else None


def list_rows(root: str | os.PathLike) -> dict[str, list]:
    """Every row of the dataset as ``{"path": row references, "label": ints, "wnid": names, "sha256",
    "bytes"}`` (the manifest's columns), without decoding an image."""
    from ..progress import progress

    root = str(Path(root))
    dataset = _open(root)
    names = label_names(root)
    rows: dict[str, list] = {"path": [], "label": [], "wnid": [], "sha256": [], "bytes": []}
    for start in progress(range(0, len(dataset), 1024), total=-(-len(dataset) // 1024), desc="list dataset"):
        batch = dataset[start:start + 1024]
        for offset, (image, label) in enumerate(zip(batch["image"], batch["label"])):
            data = image["bytes"]
            require(data is not None, f"{root}: row {start + offset} has no image bytes")
            name = Path(image.get("path") or f"{start + offset:08d}.JPEG").name
            rows["path"].append(row_reference(root, start + offset, name))
            rows["label"].append(int(label))
            rows["wnid"].append(names[int(label)] if names else str(int(label)))
            rows["sha256"].append(hashlib.sha256(data).hexdigest())
            rows["bytes"].append(len(data))
    require(rows["path"], f"{root}: the dataset has no rows")
    return rows


def read_row_bytes(reference: str) -> bytes:
    """The encoded image bytes of a row reference."""
    root, row, _ = parse_row_reference(reference)
    return _open(root)[row]["image"]["bytes"]
