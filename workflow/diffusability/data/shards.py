"""ImageNet at scale: a manifest, then center-cropped uint8 shards that can be memory-mapped.

Two steps, so that a workflow can depend on the (cheap) manifest and rerun the (expensive)
sharding only where it is incomplete:

1. :func:`build_manifest` lists ``root/<wnid>/*`` (via ``datasets``' imagefolder listing),
   labels each file by the sorted train wnids and records its SHA-256 → a Parquet table
   ``path, wnid, label, sha256, bytes`` (row order = shard order).
2. :func:`write_shards` cuts the manifest into shards of ``shard_size`` rows; a worker
   decodes and ADM-center-crops one shard and writes ``images-XXXXX.npy`` uint8
   (n, H, W, 3), ``labels-XXXXX.npy`` int64 (n,), ``rows-XXXXX.npy`` int64 (n,) (manifest rows
   kept) and, last, ``shard-XXXXX.json`` (the completion marker with counts and unreadable
   files). Shards whose marker exists and agrees with the manifest are skipped, so a killed
   run resumes where it stopped. ``index.json`` is written when every shard is complete.

:class:`ShardedImages` opens the result with ``numpy.load(mmap_mode="r")``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DiffusabilityError, require
from ..io import atomic_path, file_sha256, read_json, write_json
from ..progress import log, progress

MANIFEST_COLUMNS = ("path", "wnid", "label", "sha256", "bytes")


def _hash_one(path: str) -> tuple[str, int]:
    from .hf_dataset import is_row_reference, read_row_bytes

    if is_row_reference(path):
        import hashlib

        data = read_row_bytes(path)
        return hashlib.sha256(data).hexdigest(), len(data)
    return file_sha256(path), os.path.getsize(path)


def build_manifest(image_root: str | os.PathLike, train_root: str | os.PathLike, *, workers: int = 1,
                   cache_dir: str | None = None):
    """A pandas DataFrame with one row per image under ``image_root/<wnid>/``.

    Labels are positions in the sorted wnid folder names of ``train_root`` (the same labels for
    train and val); a wnid absent from the train tree is an error. Rows are sorted by path.
    An on-disk Hugging Face dataset (``save_to_disk``) is listed instead by rows, with its own labels
    (``data.hf_dataset``; ``train_root`` is then not read).
    """
    import pandas as pd

    from .hf_dataset import is_hf_dataset, list_rows
    from .imagenet import class_wnids, list_image_folder

    if is_hf_dataset(image_root):
        rows = list_rows(image_root)
        return pd.DataFrame({**rows, "label": np.asarray(rows["label"], dtype=np.int64),
                             "bytes": np.asarray(rows["bytes"], dtype=np.int64)})[list(MANIFEST_COLUMNS)]

    label_of = {w: k for k, w in enumerate(class_wnids(train_root))}
    listing = list_image_folder(image_root, cache_dir)
    unknown = sorted(set(listing.wnids) - set(label_of))
    require(not unknown, f"{image_root}: class folders not in {train_root}: {unknown[:5]}")
    hashes = _map(_hash_one, listing.paths, workers, desc="sha256")
    return pd.DataFrame({
        "path": listing.paths,
        "wnid": listing.wnids,
        "label": np.array([label_of[w] for w in listing.wnids], dtype=np.int64),
        "sha256": [h for h, _ in hashes],
        "bytes": np.array([b for _, b in hashes], dtype=np.int64),
    })


def _map(function, items: list, workers: int, desc: str) -> list:
    """``function`` over ``items`` in order, in ``workers`` processes (1 = in this process)."""
    if workers <= 1 or len(items) < 2:
        return [function(item) for item in progress(items, total=len(items), desc=desc)]
    import multiprocessing

    # Chunks amortise the inter-process traffic; fork keeps startup cheap (no re-import).
    chunk = max(1, min(256, len(items) // (4 * workers)))
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return list(progress(pool.imap(function, items, chunksize=chunk), total=len(items), desc=desc))


@dataclass(frozen=True)
class ShardJob:
    """One shard's work: its index, rows of the (selected) manifest, and the crop size."""

    index: int
    rows: np.ndarray     # int64 (n,) manifest row numbers
    paths: list[str]
    labels: np.ndarray   # int64 (n,)
    image_size: int
    out_dir: str
    mask_paths: list[str | None] | None = None  # ImageNet-S mask per image (None: no mask), or no masks at all
    mask_lookup: np.ndarray | None = None       # ImageNet-S class id → ImageNet-1k label (imagenet_s.class_id_to_label)


#: Per-image arrays of a shard; the mask arrays exist only in shards written with masks.
ARRAY_KINDS = ("images", "labels", "rows")
MASK_KINDS = ("masks", "mask_valid", "mask_label")


def shard_names(out_dir: str | os.PathLike, index: int) -> dict[str, Path]:
    """Paths of one shard's files (every kind; the mask kinds are used only when the shard has masks)."""
    out = Path(out_dir)
    names = {kind: out / f"{kind}-{index:05d}.npy" for kind in ARRAY_KINDS + MASK_KINDS}
    names["shard"] = out / f"shard-{index:05d}.json"
    return names


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)


def process_shard(job: ShardJob) -> dict:
    """Decode, crop and write one shard; returns its completion record (also its marker).

    With masks: ``masks`` / ``mask_valid`` bool (n, S, S) (foreground; not "ignore") and
    ``mask_label`` int64 (n,), the ImageNet-1k label of the mask's dominant ImageNet-S class (−1 when
    unknown). An image without a mask gets all-False masks and label −1 (nothing known).
    """
    from .imagenet import load_center_cropped, load_cropped_mask_ids
    from .imagenet_s import dominant_label, foreground_and_valid

    n, size = len(job.paths), job.image_size
    with_masks = job.mask_paths is not None
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, size, size) if with_masks else (0,), dtype=bool)
    valid = np.zeros_like(masks)
    mask_label = np.full(n, -1, dtype=np.int64)
    keep = np.ones(n, dtype=bool)
    bad = []
    for i, path in enumerate(job.paths):
        try:
            images[i] = load_center_cropped(path, size)
            if with_masks and job.mask_paths[i] is not None:
                ids = load_cropped_mask_ids(job.mask_paths[i], path, size)
                masks[i], valid[i] = foreground_and_valid(ids)
                if job.mask_lookup is not None:
                    mask_label[i] = dominant_label(ids, job.mask_lookup)
        except (OSError, SyntaxError, ValueError) as exc:
            keep[i] = False
            bad.append({"path": path, "reason": f"{type(exc).__name__}: {exc}"})
    names = shard_names(job.out_dir, job.index)
    arrays = {"images": images[keep], "labels": job.labels[keep], "rows": job.rows[keep]}
    if with_masks:
        arrays.update(masks=masks[keep], mask_valid=valid[keep], mask_label=mask_label[keep])
    for kind, array in arrays.items():
        _save_npy(names[kind], array)
    kept_labels = job.labels[keep]
    known = mask_label[keep] >= 0
    record = {"index": job.index, "first_row": int(job.rows[0]) if n else 0, "n_rows": n,
              "n_images": int(keep.sum()), "image_size": size, "masks": with_masks,
              "n_masked": int(sum(p is not None for p, k in zip(job.mask_paths, keep) if k)) if with_masks else 0,
              "mask_label_known": int(known.sum()),
              "mask_label_agrees": int((mask_label[keep][known] == kept_labels[known]).sum()),
              "bad": bad}
    write_json(names["shard"], record)  # written last: its presence means the shard is complete
    return record


def _shard_is_complete(job: ShardJob) -> bool:
    names = shard_names(job.out_dir, job.index)
    kinds = ARRAY_KINDS + (MASK_KINDS if job.mask_paths is not None else ()) + ("shard",)
    if not all(names[kind].is_file() for kind in kinds):
        return False
    try:
        record = read_json(names["shard"])
    except DiffusabilityError:
        return False
    return (record.get("n_rows") == len(job.rows) and record.get("image_size") == job.image_size
            and record.get("first_row") == (int(job.rows[0]) if len(job.rows) else 0)
            and bool(record.get("masks", False)) == (job.mask_paths is not None))


def select_rows(manifest, *, n_classes: int | None = None, n_images: int = 0, seed: int = 0, name: str = "images",
                keep_stems=None):
    """The manifest rows a split uses, in manifest order (its row numbers kept as the index).

    ``n_classes``: keep labels below it (the first classes of the sorted train wnids);
    ``keep_stems``: keep only files whose stem is in it (e.g. the val images with an ImageNet-S mask);
    ``n_images`` > 0: then a seeded random subset of that many rows (``imagenet.select_subset``).
    """
    from .imagenet import select_subset

    chosen = manifest
    if n_classes is not None:
        chosen = chosen[chosen["label"] < n_classes]
    if keep_stems is not None:
        from .hf_dataset import image_stem

        stems = chosen["path"].map(image_stem)
        chosen = chosen[stems.isin(keep_stems)]
        require(len(chosen), f"{name}: no image has a mask among the {len(keep_stems)} masks")
    return chosen.iloc[select_subset(n_images, len(chosen), seed, name)]


def write_shards(manifest, out_dir: str | os.PathLike, *, image_size: int, shard_size: int = 1000,
                 workers: int = 1, max_bad_fraction: float = 0.001, masks_dir: str | None = None,
                 mask_categories: str | None = None, n_classes: int | None = None) -> dict:
    """Write (or complete) the shards of ``manifest`` (a DataFrame with ``path``, ``label``, and ``wnid``
    when masks are mapped to labels; its index gives the rows recorded in the shards).

    With ``masks_dir`` (ImageNet-S ``validation-segmentation``) each shard also holds the aligned
    masks of its images; with ``mask_categories`` (the variant's wnid list) each mask's dominant
    class is mapped to an ImageNet-1k label and the agreement with the folder label is counted.
    Returns the index written to ``out_dir/index.json``: shard counts, image totals, mask counts and
    the unreadable files. Raises if unreadable files exceed ``max_bad_fraction`` of the manifest
    (the shards already written stay, so fixing the data and rerunning redoes nothing else).
    """
    require(image_size > 0 and shard_size > 0 and workers > 0,
            f"write_shards: image_size, shard_size and workers must be positive "
            f"(got {image_size}, {shard_size}, {workers})")
    for column in ("path", "label"):
        require(column in manifest.columns, f"manifest: missing column {column!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = manifest["path"].tolist()
    labels = manifest["label"].to_numpy(dtype=np.int64)
    rows = np.asarray(manifest.index, dtype=np.int64)
    mask_paths, lookup = None, None
    if masks_dir is not None:
        from .imagenet_s import index_masks

        from .hf_dataset import image_stem

        by_stem = index_masks(masks_dir)
        mask_paths = [str(by_stem[image_stem(p)]) if image_stem(p) in by_stem else None for p in paths]
        if mask_categories is not None:
            from .imagenet_s import class_id_to_label, read_categories

            require("wnid" in manifest.columns, "manifest: missing column 'wnid' (needed to map mask classes)")
            lookup = class_id_to_label(read_categories(mask_categories),
                                       dict(zip(manifest["wnid"], manifest["label"].astype(int))))
    jobs = [ShardJob(k, rows[start:start + shard_size], paths[start:start + shard_size],
                     labels[start:start + shard_size], image_size, str(out),
                     mask_paths[start:start + shard_size] if mask_paths is not None else None, lookup)
            for k, start in enumerate(range(0, len(paths), shard_size))]
    todo = [job for job in jobs if not _shard_is_complete(job)]
    log.info("shards: %d of %d to write (%d images each, %d workers%s)", len(todo), len(jobs), shard_size, workers,
             ", with ImageNet-S masks" if mask_paths is not None else "")
    _map(process_shard, todo, workers, desc="shards")

    records = [read_json(shard_names(out, job.index)["shard"]) for job in jobs]
    bad = [item for record in records for item in record["bad"]]
    for item in bad:
        log.warning("unreadable image skipped: %s (%s)", item["path"], item["reason"])
    total = len(paths)
    if total and len(bad) / total > max_bad_fraction:
        listed = "; ".join(item["path"] for item in bad[:10])
        raise DiffusabilityError(f"{len(bad)} of {total} images unreadable ({len(bad) / total:.4%} > "
                                 f"max_bad_fraction {max_bad_fraction:.4%}): {listed}")
    index = {"image_size": image_size, "shard_size": shard_size, "n_rows": total,
             "n_images": sum(r["n_images"] for r in records), "n_shards": len(jobs),
             "n_classes": int(n_classes) if n_classes is not None else int(labels.max() + 1 if total else 0),
             "masks": mask_paths is not None,
             "n_masked": sum(r.get("n_masked", 0) for r in records),
             "mask_label_known": sum(r.get("mask_label_known", 0) for r in records),
             "mask_label_agrees": sum(r.get("mask_label_agrees", 0) for r in records),
             "shards": [{"index": r["index"], "n_images": r["n_images"]} for r in records], "bad": bad}
    if index["mask_label_known"]:
        log.info("ImageNet-S: %d masked images; the dominant mask class agrees with the folder label for %d of %d",
                 index["n_masked"], index["mask_label_agrees"], index["mask_label_known"])
    write_json(out / "index.json", index)
    return index


def write_array_shards(split: dict, out_dir: str | os.PathLike, *, shard_size: int = 1000,
                       n_classes: int | None = None) -> dict:
    """Write an in-memory split (``images`` uint8 (N, S, S, 3), ``labels`` (N,), optional ``masks`` /
    ``mask_valid`` bool (N, S, S) and ``mask_label`` (N,)) as shards in the layout of
    :func:`write_shards`, e.g. to move a ``prepare-data`` file to the memory-mapped storage."""
    images, labels = np.asarray(split["images"]), np.asarray(split["labels"], dtype=np.int64)
    require(images.dtype == np.uint8 and images.ndim == 4 and images.shape[1] == images.shape[2],
            f"write_array_shards: images must be uint8 (N, S, S, 3), got {images.dtype} {images.shape}")
    require(labels.shape == (len(images),), "write_array_shards: one label per image")
    with_masks = split.get("masks") is not None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for k, start in enumerate(range(0, len(images), shard_size)):
        rows = np.arange(start, min(start + shard_size, len(images)), dtype=np.int64)
        arrays = {"images": images[rows], "labels": labels[rows], "rows": rows}
        if with_masks:
            masks = np.asarray(split["masks"], dtype=bool)[rows]
            valid = split.get("mask_valid")
            mask_label = split.get("mask_label")
            arrays.update(masks=masks, mask_valid=np.asarray(valid, dtype=bool)[rows] if valid is not None
                          else np.ones_like(masks),
                          mask_label=np.asarray(mask_label, dtype=np.int64)[rows] if mask_label is not None
                          else np.full(len(rows), -1, dtype=np.int64))
        names = shard_names(out, k)
        for kind, array in arrays.items():
            _save_npy(names[kind], array)
        record = {"index": k, "first_row": int(start), "n_rows": len(rows), "n_images": len(rows),
                  "image_size": int(images.shape[1]), "masks": with_masks, "bad": []}
        write_json(names["shard"], record)
        records.append(record)
    index = {"image_size": int(images.shape[1]), "shard_size": shard_size, "n_rows": len(images),
             "n_images": len(images), "n_shards": len(records),
             "n_classes": int(n_classes) if n_classes is not None else int(labels.max() + 1 if len(labels) else 0),
             "masks": with_masks, "shards": [{"index": r["index"], "n_images": r["n_images"]} for r in records],
             "bad": []}
    write_json(out / "index.json", index)
    return index


class ConcatenatedArrays:
    """Read-only global indexing over arrays (memory-mapped shards) that share their trailing shape.

    ``x[i]`` → one item; ``x[a:b]`` → the items of a contiguous range (one read per shard);
    ``x[indices]`` (int array / list / tensor) → the gathered items in the given order.
    """

    def __init__(self, arrays: list[np.ndarray], trailing: tuple[int, ...], dtype):
        self.arrays = arrays
        self.dtype = np.dtype(dtype)
        self._offsets = np.cumsum([0] + [len(a) for a in arrays])
        self.shape = (int(self._offsets[-1]), *trailing)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _empty(self) -> np.ndarray:
        return np.zeros((0, *self.shape[1:]), dtype=self.dtype)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            pieces = []
            for shard, array in enumerate(self.arrays):
                lo, hi = max(start, self._offsets[shard]), min(stop, self._offsets[shard + 1])
                if lo < hi:
                    pieces.append(np.asarray(array[lo - self._offsets[shard]:hi - self._offsets[shard]]))
            return np.concatenate(pieces) if pieces else self._empty()
        if np.ndim(key) == 0:
            i = int(key)
            require(-len(self) <= i < len(self), f"index {i} out of range for {len(self)} items")
            i %= len(self)
            shard = int(np.searchsorted(self._offsets, i, side="right") - 1)
            return np.asarray(self.arrays[shard][i - self._offsets[shard]])
        indices = np.asarray(key.cpu() if hasattr(key, "cpu") else key, dtype=np.int64).reshape(-1)
        if not len(indices):
            return self._empty()
        require(indices.min() >= -len(self) and indices.max() < len(self),
                f"indices out of range for {len(self)} items")
        indices = indices % len(self)
        out = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
        shard_of = np.searchsorted(self._offsets, indices, side="right") - 1
        for shard in np.unique(shard_of):
            where = np.nonzero(shard_of == shard)[0]
            local = indices[where] - self._offsets[shard]
            order = np.argsort(local, kind="stable")  # ascending reads are kinder to a memory map
            out[where[order]] = self.arrays[shard][local[order]]
        return out

    def __array__(self, dtype=None, copy=None):
        array = self[0:len(self)]
        return array.astype(dtype) if dtype is not None else array


class ShardedImages:
    """Read-only, memory-mapped view of a shard directory (``index.json`` and its shards).

    ``images`` → uint8 (N, S, S, 3) and, when written with masks, ``masks`` / ``mask_valid`` bool
    (N, S, S): :class:`ConcatenatedArrays`, read lazily. ``labels`` int64 (N,) and ``mask_label``
    int64 (N,) are loaded in memory (small). ``images[i]`` / ``batch(indices)`` kept for convenience.
    """

    def __init__(self, directory: str | os.PathLike):
        directory = Path(directory)
        if directory.name == "index.json":
            directory = directory.parent
        self.directory = directory
        self.index = index = read_json(directory / "index.json")
        self.image_size = size = int(index["image_size"])
        self.n_classes = int(index.get("n_classes", 0))
        self.has_masks = bool(index.get("masks", False))
        shards = index["shards"]

        def load(kind: str, shape: tuple[int, ...], dtype, mmap: bool = True) -> list[np.ndarray]:
            arrays = [np.load(shard_names(directory, s["index"])[kind], mmap_mode="r" if mmap else None)
                      for s in shards]
            for s, array in zip(shards, arrays):
                require(array.shape == (s["n_images"], *shape) and array.dtype == dtype,
                        f"{directory}: shard {s['index']} {kind} is {array.dtype} {array.shape}, index.json says "
                        f"{s['n_images']} items of {np.dtype(dtype)} {shape}")
            return arrays

        self.images = ConcatenatedArrays(load("images", (size, size, 3), np.uint8), (size, size, 3), np.uint8)
        self.labels = ConcatenatedArrays(load("labels", (), np.int64, mmap=False), (), np.int64)[:]
        self.masks = self.mask_valid = self.mask_label = None
        if self.has_masks:
            self.masks = ConcatenatedArrays(load("masks", (size, size), np.bool_), (size, size), np.bool_)
            self.mask_valid = ConcatenatedArrays(load("mask_valid", (size, size), np.bool_), (size, size), np.bool_)
            self.mask_label = ConcatenatedArrays(load("mask_label", (), np.int64, mmap=False), (), np.int64)[:]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.images[int(i)]

    def batch(self, indices) -> np.ndarray:
        """uint8 (len(indices), S, S, 3) gathered across shards."""
        return self.images[np.asarray(indices, dtype=np.int64)]


def save_manifest(manifest, path: str | os.PathLike, image_root: str) -> None:
    """Write the manifest as Parquet with provenance (root and row count in its metadata)."""
    from ..io import provenance, write_parquet

    write_parquet(manifest, path, provenance(None, image_root=str(image_root), n_rows=len(manifest)))


def read_manifest(path: str | os.PathLike):
    """Read a manifest Parquet and check its columns."""
    import pandas as pd

    from ..io import read_parquet

    table = read_parquet(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
    require(not missing, f"{path}: manifest lacks columns {missing}")
    for column in ("label", "bytes"):
        require(pd.api.types.is_integer_dtype(table[column]),
                f"{path}: manifest column {column!r} must be integer, got {table[column].dtype}")
    return table


def verify_manifest(manifest, workers: int = 1) -> list[str]:
    """Paths whose current SHA-256 differs from the manifest (files changed since listing)."""
    hashes = _map(_hash_one, manifest["path"].tolist(), workers, desc="verify")
    return [p for p, (h, _), expected in zip(manifest["path"], hashes, manifest["sha256"]) if h != expected]
