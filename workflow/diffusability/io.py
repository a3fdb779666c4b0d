"""File I/O shared by every command: atomic writes, tensor files, tables with provenance.

Nothing here is used by ``metrics`` or ``evaluation`` (those take tensors); the commands of
each stage read their inputs and write their outputs through these helpers, so every
artifact is either complete or absent, never half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import DiffusabilityError, require

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic. It gets
    the permissions of a file created by ``open`` (0666 minus the umask), not ``mkstemp``'s 0600:
    on a shared cluster folder the group must be able to read the tables.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix,
                               dir=target.parent)
    os.fchmod(fd, 0o666 & ~_current_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter before Python 3.13's os)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: PathLike) -> Any:
    """Read a JSON file, with an error that names the file when it is missing or invalid."""
    path = Path(path)
    require(path.is_file(), f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DiffusabilityError(f"{path}: not valid JSON ({exc})") from exc


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_tensors(path: PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> None:
    """Save a dict of torch tensors or numpy arrays to a ``.safetensors`` file, atomically.

    The header is written by :func:`safetensors_header` (tensors and metadata keys in sorted order),
    not by the safetensors library, whose metadata order varies from process to process: identical
    content gives identical bytes, so a file's hash identifies its content.
    """
    import numpy as np
    import torch

    arrays, dtypes = {}, {}
    for name, value in sorted(tensors.items()):
        dtypes[name] = None
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().contiguous()
            if value.dtype == torch.bfloat16:  # numpy has no bfloat16: its bits travel as int16
                value, dtypes[name] = value.view(torch.int16), _BFLOAT16
            value = value.numpy()
        require(isinstance(value, np.ndarray), f"{path}: tensor {name!r} is {type(value).__name__}")
        arrays[name] = np.ascontiguousarray(value)
        dtypes[name] = dtypes[name] or arrays[name].dtype
    header, _ = safetensors_header(path, {k: (dtypes[k], v.shape) for k, v in arrays.items()}, metadata)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(header)
            for name in sorted(arrays):
                handle.write(memoryview(arrays[name].reshape(-1).view(np.uint8)))


def safetensors_header(path: PathLike, tensors: Mapping[str, tuple[Any, tuple[int, ...]]],
                       metadata: Mapping[str, str] | None = None) -> tuple[bytes, dict]:
    """(header bytes, {name: (numpy dtype, shape, byte offset)}) of a safetensors file, deterministically.

    Tensors are laid out in sorted-name order; the JSON header has sorted keys, no spaces, and is
    padded to a multiple of 8 bytes so the data starts aligned (as safetensors itself writes it).
    """
    import numpy as np

    to_safetensors = {v: k for k, v in _SAFETENSORS_DTYPES.items()}
    header: dict[str, Any] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}} if metadata else {}
    offset, layout = 0, {}
    for name in sorted(tensors):
        dtype, shape = tensors[name][0], tuple(int(d) for d in tensors[name][1])
        code = "BF16" if dtype is _BFLOAT16 else to_safetensors.get(np.dtype(dtype).name)
        require(code is not None, f"{path}: tensor {name!r}: unsupported dtype {dtype}")
        itemsize = 2 if code == "BF16" else np.dtype(dtype).itemsize
        size = int(np.prod(shape, dtype=np.int64)) * itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + size]}
        layout[name] = (dtype, shape, offset)
        offset += size
    text = json.dumps(header, separators=(",", ":"), sort_keys=True)
    text += " " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text.encode(), layout


@contextlib.contextmanager
def reading(path: PathLike, kind: str) -> Iterator[None]:
    """Turn any failure of a parser inside the block into a :class:`DiffusabilityError` naming the file.

    A truncated, garbage or foreign file must end a command with "<file>: not a valid <kind> (…)"
    and exit status 2, never a traceback that does not say which file was wrong.
    """
    try:
        yield
    except DiffusabilityError:
        raise
    except Exception as exc:  # noqa: BLE001 - every parser error of a bad file is reported the same way
        detail = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise DiffusabilityError(f"{path}: not a valid {kind} ({type(exc).__name__}: {detail})") from exc


def load_tensors(path: PathLike, keys: list[str] | None = None) -> dict:
    """Load a ``.safetensors`` file into a dict of torch tensors (optionally only ``keys``)."""
    from safetensors import safe_open

    path = Path(path)
    require(path.is_file(), f"{path}: file not found")
    out = {}
    with reading(path, "safetensors file"):
        with safe_open(str(path), framework="pt") as handle:
            available = list(handle.keys())
            for key in keys if keys is not None else available:
                require(key in available, f"{path}: has no tensor {key!r} (has {sorted(available)})")
                out[key] = handle.get_tensor(key)
    return out


#: Marker for bfloat16 tensors (numpy has no bfloat16: their bits travel as int16).
_BFLOAT16 = object()

#: safetensors dtype names → numpy dtypes (the ones the project writes)
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "I64": "int64", "I32": "int32",
                       "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def memory_map_tensors(path: PathLike, keys: list[str]) -> dict:
    """Tensors of a ``.safetensors`` file as torch views of a copy-on-write memory map (nothing is read
    until indexed; processes that map one file share its pages in the OS cache).

    The layout is safetensors' own: an 8-byte little-endian header length, a JSON header with each
    tensor's dtype, shape and byte range, then the data. Writing to a view never changes the file.
    """
    import numpy as np
    import torch

    path = Path(path)
    require(path.is_file(), f"{path}: file not found")
    size = path.stat().st_size
    with reading(path, "safetensors file"), open(path, "rb") as handle:
        header_length = int.from_bytes(handle.read(8), "little")
        require(8 + header_length <= size, f"{path}: not a valid safetensors file (header of {header_length} bytes "
                                           f"in a {size}-byte file: truncated or not safetensors)")
        header = json.loads(handle.read(header_length))
        require(isinstance(header, dict), f"{path}: not a valid safetensors file (the header is not a JSON object)")
    out = {}
    for key in keys:
        require(key in header and key != "__metadata__",
                f"{path}: has no tensor {key!r} (has {sorted(k for k in header if k != '__metadata__')})")
        entry = header[key]
        require(entry["dtype"] in _SAFETENSORS_DTYPES, f"{path}: tensor {key!r} has unsupported dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        require(8 + header_length + end <= size, f"{path}: tensor {key!r} ends at byte {8 + header_length + end} "
                                                 f"but the file has {size} bytes (truncated)")
        if end == begin:
            out[key] = torch.zeros(shape, dtype=getattr(torch, _SAFETENSORS_DTYPES[entry["dtype"]]))
            continue
        array = np.memmap(path, dtype=_SAFETENSORS_DTYPES[entry["dtype"]], mode="c", offset=8 + header_length + begin,
                          shape=shape)
        out[key] = torch.from_numpy(array)
    return out


class ResumableTensorFile:
    """A ``.safetensors`` file written region by region, that a killed job continues where it stopped.

    Every tensor's dtype and shape is known in advance, so the header is written first and each tensor's
    data region is filled through a writable memory map of ``<path>.partial`` (nothing has to fit in
    memory). ``mark(name, rows)`` flushes and records in ``<path>.progress.json`` how many leading rows of
    a tensor are final; a rerun with the same layout and ``fingerprint`` (what the content depends on)
    reopens the partial file and continues from there, anything else starts over. ``commit()`` renames the
    finished file onto ``path`` (atomically) and removes the progress record.

    Args:
        tensors: name → (numpy dtype name, shape); laid out in sorted-name order.
        metadata: the file's string metadata; fingerprint: JSON-able identity of the content.
    """

    def __init__(self, path: PathLike, tensors: Mapping[str, tuple[str, tuple[int, ...]]],
                 metadata: Mapping[str, str] | None = None, fingerprint: Any = None):
        import numpy as np

        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.progress_path = self.path.with_name(self.path.name + ".progress.json")
        self._header, layout = safetensors_header(
            path, {name: (np.dtype(dtype), shape) for name, (dtype, shape) in tensors.items()}, metadata)
        offset = sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
                     for dtype, shape, _ in layout.values())
        self._identity = {"header": hashlib.sha256(self._header).hexdigest(), "fingerprint": fingerprint}
        self.done = {name: 0 for name in tensors}
        resumed = self._resume()
        if not resumed:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.partial, "wb") as handle:
                handle.write(self._header)
                handle.truncate(len(self._header) + offset)
            self._write_progress()
        start = len(self._header)
        self.arrays = {name: np.memmap(self.partial, dtype=dtype, mode="r+", offset=start + begin, shape=shape)
                       for name, (dtype, shape, begin) in layout.items()}
        self.resumed = resumed

    def _resume(self) -> bool:
        if not (self.partial.is_file() and self.progress_path.is_file()):
            return False
        try:
            progress = read_json(self.progress_path)
        except DiffusabilityError:
            return False
        with open(self.partial, "rb") as handle:
            same_header = handle.read(len(self._header)) == self._header
        expected = json.loads(json.dumps(self._identity, default=_json_default))
        if not same_header or progress.get("identity") != expected:
            return False
        self.done.update({k: int(v) for k, v in progress.get("done", {}).items() if k in self.done})
        return True

    def _write_progress(self) -> None:
        write_json(self.progress_path, {"identity": self._identity, "done": self.done})

    def mark(self, name: str, rows: int) -> None:
        """Flush tensor ``name`` and record its first ``rows`` rows as final."""
        self.arrays[name].flush()
        self.done[name] = int(rows)
        self._write_progress()

    def commit(self) -> None:
        """Flush everything, rename the file onto ``path`` and drop the progress record."""
        for array in self.arrays.values():
            array.flush()
        self.arrays = {}
        os.replace(self.partial, self.path)
        self.progress_path.unlink(missing_ok=True)


def load_arrays(path: PathLike) -> dict:
    """Load ``.npz`` or ``.safetensors`` into a dict of numpy arrays."""
    import numpy as np

    path = Path(path)
    require(path.is_file(), f"{path}: file not found")
    if path.suffix == ".npz":
        with reading(path, ".npz file"), np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if path.suffix == ".safetensors":
        return {k: v.numpy() for k, v in load_tensors(path).items()}
    raise DiffusabilityError(f"{path}: expected a .npz or .safetensors file")


def save_npz(path: PathLike, **arrays: Any) -> None:
    """``numpy.savez`` (uncompressed: the ADM evaluator layout), atomically."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, hex (not remembered: the manifest hashes a million images with it;
    inputs named in provenance and run identities go through :func:`identity.file_identity`)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit() -> str:
    """The repository's HEAD commit (``unknown`` outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


#: The ``diffusability`` subcommand this process runs (set by the CLI): its code identity goes into
#: the provenance of every artifact the process writes.
CURRENT_COMMAND: str | None = None
#: {name: path} of the running command's inputs (set by the CLI from its arguments, :func:`command_inputs`):
#: their content hashes go into the provenance of every artifact the process writes.
CURRENT_INPUTS: dict[str, str] = {}
#: The safetensors metadata key (and ``.npz`` array name) that holds an artifact's provenance as JSON.
PROVENANCE_KEY = "provenance"
#: Argument names that are never inputs whatever their value: where a command writes, how it runs.
_NOT_INPUT_ARGS = frozenset({"command", "func", "verbose", "device", "spec", "not_inputs", "input_files"})


def command_inputs(args: Any) -> dict[str, str]:
    """{name: path} of the inputs of a parsed command line: every argument naming an existing file or folder.

    An argument counts unless it is an output (its name starts with ``out``, or the parser lists it in
    ``set_defaults(not_inputs=(…))``, e.g. ``sample --trajectories``) or one of :data:`_NOT_INPUT_ARGS`;
    a list argument gives one input per existing path, named ``name[i]``. Outputs are left out by name,
    not by existence: a file that a killed job left at an output path is never taken for an input.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``diffusability <command>`` line.

    Returns
    -------
    dict
        Names in argument order, paths as given (relative paths stay relative).
    """
    skip = _NOT_INPUT_ARGS | set(getattr(args, "not_inputs", ()))
    # a folder argument of which the command reads only some files (``set_defaults(input_files={name: (…)})``,
    # e.g. sample's latent folder: stats.safetensors only) is those files: hashing the folder would read the
    # 42 GB train latents of an f16d32 ImageNet study once per sampling job. The files may depend on the
    # command line (a callable of the parsed arguments, e.g. the train latents only when a metric reads them).
    narrowed = {name: files(args) if callable(files) else files
                for name, files in (getattr(args, "input_files", None) or {}).items()}
    found: dict[str, str] = {}

    def visit(name: str, value: Any) -> None:
        if isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                visit(f"{name}[{index}]", item)
        elif isinstance(value, (str, os.PathLike)) and str(value) and Path(value).exists():
            found[name] = str(value)

    for name, value in vars(args).items():
        if name in skip or name.startswith("out"):
            continue
        if name in narrowed and isinstance(value, (str, os.PathLike)) and Path(value).is_dir():
            for file in narrowed[name]:
                visit(f"{name}/{file}", Path(value) / file)
        else:
            visit(name, value)
    return found


def input_hashes(inputs: Mapping[str, PathLike | None]) -> dict[str, str | None]:
    """{name: SHA-256 of the input's content} (:func:`diffusability.identity.path_identity`), names sorted.

    A file is hashed once per process (however many artifacts or run identities name it); a shard
    folder by its index and per-shard records, not its image arrays. An input that vanished while the
    command ran (or None) is recorded as None rather than failing the job at its last step.
    """
    from .identity import path_identity

    return {name: (path_identity(path) if path is not None and Path(path).exists() else None)
            for name, path in sorted(inputs.items())}


def provenance_record(config: Any = None, inputs: Mapping[str, PathLike | None] | None = None,
                      **extra: Any) -> dict[str, Any]:
    """What made an artifact, as JSON-able values (:func:`provenance` flattens it for Parquet).

    Parameters
    ----------
    config : JSON-able, optional
        The config slice (spec) of the job: recorded as ``config_sha256``.
    inputs : mapping of str to path, optional
        Named inputs besides the command line's (:data:`CURRENT_INPUTS`): hashed into ``inputs``.
    **extra
        Further JSON-able entries recorded as they are.

    Returns
    -------
    dict
        ``diffusability_version``, ``git_commit``, ``device`` (:func:`diffusability.devices.used_device`),
        ``software_versions`` ({distribution: version}, the list ``software_identity`` hashes), ``inputs``
        ({name: sha256}) and, inside a ``diffusability`` command, ``command``, ``code_identity`` and
        ``software_identity``; ``config_sha256`` when ``config`` is given. No time stamp, host name or
        timing: identical runs on one machine record identical provenance.
    """
    from . import __version__
    from .code_identity import software_versions
    from .devices import used_device

    meta: dict[str, Any] = {"diffusability_version": __version__, "git_commit": git_commit()}
    if CURRENT_COMMAND is not None:
        from .code_identity import command_identity, software_identity

        try:
            meta.update(command=CURRENT_COMMAND, code_identity=command_identity(CURRENT_COMMAND),
                        software_identity=software_identity())
        except KeyError:  # a command registered outside the package's command modules
            meta.update(command=CURRENT_COMMAND)
    if config is not None:
        text = json.dumps(config, sort_keys=True, default=_json_default)
        meta["config_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    meta.update(device=used_device(), software_versions=software_versions(),
                inputs=input_hashes({**CURRENT_INPUTS, **dict(inputs or {})}))
    meta.update(extra)
    return meta


def provenance(config: Any = None, inputs: Mapping[str, PathLike | None] | None = None,
               **extra: Any) -> dict[str, str]:
    """Metadata stored in every table: :func:`provenance_record` with each non-string value as key-sorted
    JSON (Parquet key-value metadata holds strings), so each artifact says which code, config, inputs,
    software and device made it."""
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=_json_default)
            for k, v in provenance_record(config, inputs, **extra).items()}


def provenance_json(config: Any = None, inputs: Mapping[str, PathLike | None] | None = None, **extra: Any) -> str:
    """:func:`provenance_record` as one compact, key-sorted JSON text: equal provenance, equal bytes."""
    record = provenance_record(config, inputs, **extra)
    return json.dumps(record, sort_keys=True, separators=(",", ":"), default=_json_default)


def provenance_metadata(config: Any = None, inputs: Mapping[str, PathLike | None] | None = None,
                        **extra: Any) -> dict[str, str]:
    """``{"provenance": JSON}``: the provenance entry of a ``.safetensors`` file's string metadata."""
    return {PROVENANCE_KEY: provenance_json(config, inputs, **extra)}


def read_provenance(path: PathLike) -> dict[str, Any]:
    """The provenance an artifact records: a ``.safetensors`` file's ``provenance`` metadata, a ``.npz``
    file's ``provenance`` array, a Parquet table's ``diffusability.*`` metadata (JSON values parsed).

    Returns
    -------
    dict
        {} when the artifact records none (written by an older version, or copied in from elsewhere).
    """
    path = Path(path)
    require(path.is_file(), f"{path}: file not found")
    if path.suffix == ".safetensors":
        with reading(path, "safetensors file"), open(path, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        text = (header.get("__metadata__") or {}).get(PROVENANCE_KEY)
        return json.loads(text) if text else {}
    if path.suffix == ".npz":
        import numpy as np

        with reading(path, ".npz file"), np.load(path, allow_pickle=False) as data:
            return json.loads(str(data[PROVENANCE_KEY][0])) if PROVENANCE_KEY in data.files else {}
    out: dict[str, Any] = {}
    for key, value in parquet_metadata(path).items():
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out[key] = parsed if isinstance(parsed, (dict, list)) else value
    return out


def write_parquet(df, path: PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Write a pandas DataFrame to Parquet with ``metadata`` in the file's key-value metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({f"diffusability.{k}".encode(): str(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet(path: PathLike):
    """Read a Parquet table into pandas, with an error naming the file when missing."""
    import pandas as pd

    path = Path(path)
    require(path.is_file(), f"{path}: file not found")
    with reading(path, "Parquet table"):
        return pd.read_parquet(path)


def parquet_metadata(path: PathLike) -> dict[str, str]:
    """The ``diffusability.*`` key-value metadata written by :func:`write_parquet`."""
    import pyarrow.parquet as pq

    raw = pq.read_schema(path).metadata or {}
    prefix = b"diffusability."
    return {k[len(prefix):].decode(): v.decode() for k, v in raw.items() if k.startswith(prefix)}
