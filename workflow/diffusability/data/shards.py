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
    return file_sha256(path), os.path.getsize(path)


def build_manifest(image_root: str | os.PathLike, train_root: str | os.PathLike, *, workers: int = 1,
                   cache_dir: str | None = None):
    """A pandas DataFrame with one row per image under ``image_root/<wnid>/``.

    Labels are positions in the sorted wnid folder names of ``train_root`` (the same labels for
    train and val); a wnid absent from the train tree is an error. Rows are sorted by path.
    """
    import pandas as pd

    from .imagenet import class_wnids, list_image_folder

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
    """One shard's work: its index, rows of the manifest, and the crop size."""

    index: int
    rows: np.ndarray     # int64 (n,) manifest row numbers
    paths: list[str]
    labels: np.ndarray   # int64 (n,)
    image_size: int
    out_dir: str


def shard_names(out_dir: str | os.PathLike, index: int) -> dict[str, Path]:
    """Paths of one shard's files."""
    out = Path(out_dir)
    return {kind: out / f"{kind}-{index:05d}.{'json' if kind == 'shard' else 'npy'}"
            for kind in ("images", "labels", "rows", "shard")}


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)


def process_shard(job: ShardJob) -> dict:
    """Decode, crop and write one shard; returns its completion record (also its marker)."""
    from .imagenet import load_center_cropped

    n = len(job.paths)
    images = np.zeros((n, job.image_size, job.image_size, 3), dtype=np.uint8)
    keep = np.ones(n, dtype=bool)
    bad = []
    for i, path in enumerate(job.paths):
        try:
            images[i] = load_center_cropped(path, job.image_size)
        except (OSError, SyntaxError, ValueError) as exc:
            keep[i] = False
            bad.append({"path": path, "reason": f"{type(exc).__name__}: {exc}"})
    names = shard_names(job.out_dir, job.index)
    _save_npy(names["images"], images[keep])
    _save_npy(names["labels"], job.labels[keep])
    _save_npy(names["rows"], job.rows[keep])
    record = {"index": job.index, "first_row": int(job.rows[0]) if n else 0, "n_rows": n,
              "n_images": int(keep.sum()), "image_size": job.image_size, "bad": bad}
    write_json(names["shard"], record)  # written last: its presence means the shard is complete
    return record


def _shard_is_complete(job: ShardJob) -> bool:
    names = shard_names(job.out_dir, job.index)
    if not all(p.is_file() for p in names.values()):
        return False
    try:
        record = read_json(names["shard"])
    except DiffusabilityError:
        return False
    return (record.get("n_rows") == len(job.rows) and record.get("image_size") == job.image_size
            and record.get("first_row") == (int(job.rows[0]) if len(job.rows) else 0))


def write_shards(manifest, out_dir: str | os.PathLike, *, image_size: int, shard_size: int = 1000,
                 workers: int = 1, max_bad_fraction: float = 0.001) -> dict:
    """Write (or complete) the shards of ``manifest`` (a DataFrame with ``path``, ``label``).

    Returns the index written to ``out_dir/index.json``: shard counts, image totals and the
    unreadable files. Raises if unreadable files exceed ``max_bad_fraction`` of the manifest
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
    jobs = [ShardJob(k, np.arange(start, min(start + shard_size, len(paths)), dtype=np.int64),
                     paths[start:start + shard_size], labels[start:start + shard_size], image_size, str(out))
            for k, start in enumerate(range(0, len(paths), shard_size))]
    todo = [job for job in jobs if not _shard_is_complete(job)]
    log.info("shards: %d of %d to write (%d images each, %d workers)", len(todo), len(jobs), shard_size, workers)
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
             "shards": [{"index": r["index"], "n_images": r["n_images"]} for r in records], "bad": bad}
    write_json(out / "index.json", index)
    return index


class ShardedImages:
    """Read-only, memory-mapped view of a shard directory; global indexing over all shards.

    ``images[i]`` → uint8 (H, W, 3) and ``labels`` → int64 (N,) (loaded in memory: small).
    """

    def __init__(self, directory: str | os.PathLike):
        directory = Path(directory)
        index = read_json(directory / "index.json")
        self.image_size = int(index["image_size"])
        self.images = [np.load(shard_names(directory, s["index"])["images"], mmap_mode="r")
                       for s in index["shards"]]
        for s, array in zip(index["shards"], self.images):
            require(array.shape == (s["n_images"], self.image_size, self.image_size, 3) and array.dtype == np.uint8,
                    f"{directory}: shard {s['index']} has {array.dtype} {array.shape}, index.json says "
                    f"{s['n_images']} images of {self.image_size}px")
        self.labels = np.concatenate([np.load(shard_names(directory, s["index"])["labels"])
                                      for s in index["shards"]]) if index["shards"] else np.zeros(0, np.int64)
        self._offsets = np.cumsum([0] + [len(a) for a in self.images])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        require(-len(self) <= i < len(self), f"ShardedImages: index {i} out of range for {len(self)} images")
        i = int(i) % len(self)
        shard = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return np.asarray(self.images[shard][i - self._offsets[shard]])

    def batch(self, indices) -> np.ndarray:
        """uint8 (len(indices), H, W, 3) gathered across shards."""
        return np.stack([self[i] for i in indices]) if len(indices) else \
            np.zeros((0, self.image_size, self.image_size, 3), np.uint8)


def save_manifest(manifest, path: str | os.PathLike, image_root: str) -> None:
    """Write the manifest as Parquet with provenance (root and row count in its metadata)."""
    from ..io import provenance, write_parquet

    write_parquet(manifest, path, provenance(None, image_root=str(image_root), n_rows=len(manifest)))


def read_manifest(path: str | os.PathLike):
    """Read a manifest Parquet and check its columns."""
    from ..io import read_parquet

    table = read_parquet(path)
    missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
    require(not missing, f"{path}: manifest lacks columns {missing}")
    return table


def verify_manifest(manifest, workers: int = 1) -> list[str]:
    """Paths whose current SHA-256 differs from the manifest (files changed since listing)."""
    hashes = _map(_hash_one, manifest["path"].tolist(), workers, desc="verify")
    return [p for p, (h, _), expected in zip(manifest["path"], hashes, manifest["sha256"]) if h != expected]
