"""What a training run's result depends on, as one comparable value: its run identity.

A training job resumes from its own checkpoint only when the checkpoint was written by the same
run — the same training spec *and* the same inputs. The spec alone is not enough: changing
``data.n_train`` changes the training images but not the tokenizer's spec, and a finished
checkpoint in a reused output folder would otherwise hand back the old model (the section
"Resuming and run identity" of ``docs/architecture.md``).

The identity of an input path is the SHA-256 of its content:

- a file: the SHA-256 of its bytes;
- a directory of ImageNet shards (``index.json`` inside): the hash of ``index.json``, every
  shard's completion record and its ``rows-``/``labels-`` arrays — which manifest rows, in which
  order, with which labels. The pixels of a shard are a deterministic function of those rows (the
  manifest holds each source image's SHA-256), so the multi-GB image arrays are not re-read;
- any other directory (a teacher, a pretrained network folder): the hash of every regular file's
  relative path and content, except training by-products that do not define the result
  (``checkpoints/`` and ``train_log.parquet``, whose timings differ from run to run).

A directory's hash is built from its files' SHA-256 (relative path and file hash, one line each), and a
process reads each file once: a file's hash is kept for as long as its inode, size and modification and
change times stay the same. A job that hashes its latent file for its run identity and again, inside
the latent directory, for the provenance of what it writes (:func:`diffusability.io.provenance`) reads
the file once.

Examples
--------
>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> (folder / "a.bin").write_bytes(b"abc")
3
>>> path_identity(folder / "a.bin")[:16]
'ba7816bf8f01cfea'
>>> run_identity({"lr": 1e-4}, {"train": folder / "a.bin"}) == run_identity({"lr": 1e-4}, {"train": folder / "a.bin"})
True
>>> run_identity({"lr": 1e-4}, {}) == run_identity({"lr": 2e-4}, {})
False
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from .errors import require

#: Files and folders of a directory that are by-products of training, not part of what it is.
IGNORED_NAMES = frozenset({"checkpoints", "checkpoints.superseded", "train_log.parquet"})
#: The small per-shard files that say which images a shard holds (see ``data/shards.py``).
SHARD_ID_PREFIXES = ("shard-", "rows-", "labels-")


#: {(path, device, inode, size, mtime_ns, ctime_ns): SHA-256}: files hashed by this process. A rewritten
#: file (atomic writes replace the inode) or a touched one gets a new key and is hashed again.
_FILE_HASHES: dict[tuple, str] = {}


def file_identity(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's bytes, read at most once per process while the file is unchanged.

    Parameters
    ----------
    path : str or path-like
        A regular file.
    chunk : int
        Bytes read at a time (memory stays bounded for files of any size).

    Returns
    -------
    str
        64 hex digits, ``hashlib.sha256(path.read_bytes()).hexdigest()``.
    """
    path = Path(path)
    info = path.stat()
    key = (str(path.resolve()), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    found = _FILE_HASHES.get(key)
    if found is None:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(chunk), b""):
                digest.update(block)
        found = _FILE_HASHES[key] = digest.hexdigest()
    return found


def _directory_files(root: Path) -> list[Path]:
    """Regular files under ``root`` (relative paths, sorted), training by-products left out."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_NAMES and not d.startswith("."))
        for name in files:
            if name not in IGNORED_NAMES and not name.startswith("."):
                found.append((Path(folder) / name).relative_to(root))
    return sorted(found)


def _shard_files(root: Path) -> list[Path]:
    names = [p.name for p in root.iterdir() if p.is_file()]
    return sorted(Path(n) for n in names if n == "index.json" or n.startswith(SHARD_ID_PREFIXES))


def path_identity(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file's or a directory's content, as defined in the module doc.

    Parameters
    ----------
    path : str or path-like
        A file, a shard directory (or its ``index.json``), or any other directory.

    Returns
    -------
    str
        64 hex digits; equal for equal content wherever the path lives.
    """
    path = Path(path)
    require(path.exists(), f"{path}: input not found")
    if path.is_file() and path.name != "index.json":
        return file_identity(path)
    root = path.parent if path.is_file() else path
    files = _shard_files(root) if (root / "index.json").is_file() else _directory_files(root)
    # one line per file from the per-file hashes (not one stream of all bytes): a file hashed before in
    # this process, alone or in another directory's identity, is not read again
    digest = hashlib.sha256()
    for relative in files:
        digest.update(f"{relative.as_posix()}\0{file_identity(root / relative)}\n".encode())
    return digest.hexdigest()


def canonical_json(value: Any) -> str:
    """``value`` as key-sorted, compact JSON: one text per value, whatever the key order."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def run_identity(spec: Mapping[str, Any], inputs: Mapping[str, str | os.PathLike | None]) -> dict[str, Any]:
    """The identity of a training run: its spec and the content hash of every named input.

    Parameters
    ----------
    spec : mapping
        The part of the training spec that defines the result (JSON-able).
    inputs : mapping of str to path or None
        Named inputs (``None``: the input is absent, e.g. no teacher).

    Returns
    -------
    dict
        ``{"spec": sha256 of the canonical spec JSON, "inputs": {name: sha256 or None}}`` —
        stored in every checkpoint and compared on resume.
    """
    spec_hash = hashlib.sha256(canonical_json(dict(spec)).encode()).hexdigest()
    hashed = {name: (path_identity(path) if path is not None else None) for name, path in sorted(inputs.items())}
    return {"spec": spec_hash, "inputs": hashed}


def describe_difference(saved: Mapping[str, Any] | None, current: Mapping[str, Any]) -> str:
    """Which parts of two run identities differ, in words (for the log line of a set-aside)."""
    if not saved:
        return "the checkpoint records no run identity (written by an older version)"
    parts = []
    if saved.get("spec") != current.get("spec"):
        parts.append("the training spec")
    names = sorted(set(saved.get("inputs", {})) | set(current.get("inputs", {})))
    parts += [f"input {name!r}" for name in names
              if saved.get("inputs", {}).get(name) != current.get("inputs", {}).get(name)]
    return "changed: " + ", ".join(parts) if parts else "identical"
