"""Artifacts are content-addressable and shareable: identical content gives identical bytes in any
process (the cache and the run identity rely on it), and files respect the umask (fault findings 8, 5)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys

from diffusability.io import load_arrays, read_provenance

WRITE = """
import sys, numpy, torch
from diffusability import io
from diffusability.io import provenance, provenance_metadata, save_npz, save_tensors, write_parquet
from diffusability.rows import result_row, rows_frame
out, inputs = sys.argv[1], sys.argv[2]
io.CURRENT_COMMAND = "latent-metrics"  # as inside the command: code identity, software identity
io.CURRENT_INPUTS = {"z": inputs + "/z.bin", "a": inputs + "/a.bin", "folder": inputs}
save_tensors(out + "/t.safetensors", {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(2, dtype=torch.bool)},
             metadata={**{k: str(i) for i, k in enumerate("zyxwvutsrq")}, **provenance_metadata({"b": 1, "a": 2})})
frame = rows_frame([result_row("fd", 1.5, "lower", {"k": 1, "a": 2}, 10), result_row("is", 3.0, "higher", {}, 10)])
write_parquet(frame, out + "/r.parquet", provenance({"b": 1, "a": 2}))
save_npz(out + "/s.npz", arr_0=numpy.arange(12, dtype=numpy.uint8).reshape(1, 2, 2, 3), labels=numpy.zeros(1))
"""


def _write_in_a_fresh_process(folder, umask: int, zone: str, inputs) -> None:
    folder.mkdir()
    # another hash seed and another time zone: no set order or local time may reach a file's bytes
    env = {**os.environ, "PYTHONHASHSEED": "random", "TZ": zone}
    subprocess.run([sys.executable, "-c", f"import os; os.umask({umask}); exec({WRITE!r})", str(folder),
                    str(inputs)], check=True, env=env)


def test_identical_content_gives_identical_bytes_and_the_umask_is_respected(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "z.bin").write_bytes(b"zzz")
    (inputs / "a.bin").write_bytes(b"a")
    _write_in_a_fresh_process(tmp_path / "one", 0o022, "UTC0", inputs)
    _write_in_a_fresh_process(tmp_path / "two", 0o027, "JST-9", inputs)
    for name in ("t.safetensors", "r.parquet", "s.npz"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
        assert stat.S_IMODE((tmp_path / "one" / name).stat().st_mode) == 0o644  # not mkstemp's 0600
        assert stat.S_IMODE((tmp_path / "two" / name).stat().st_mode) == 0o640
    record = read_provenance(tmp_path / "one" / "t.safetensors")
    assert record["inputs"]["z"] == hashlib.sha256(b"zzz").hexdigest()
    assert record["inputs"]["a"] == hashlib.sha256(b"a").hexdigest()
    assert read_provenance(tmp_path / "one" / "r.parquet")["inputs"] == record["inputs"]
    # the npz reads back as numpy.savez's would
    assert load_arrays(tmp_path / "one" / "s.npz")["arr_0"].tolist() == [[[[0, 1, 2], [3, 4, 5]], [[6, 7, 8],
                                                                                                [9, 10, 11]]]]
