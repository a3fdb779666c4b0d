"""Artifacts are content-addressable and shareable: identical content gives identical bytes in any
process (the cache and the run identity rely on it), and files respect the umask (fault findings 8, 5)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

WRITE = """
import sys, torch
from diffusability.io import save_tensors, write_parquet, provenance
from diffusability.rows import result_row, rows_frame
out = sys.argv[1]
save_tensors(out + "/t.safetensors", {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(2, dtype=torch.bool)},
             metadata={k: str(i) for i, k in enumerate("zyxwvutsrq")})
frame = rows_frame([result_row("fd", 1.5, "lower", {"k": 1, "a": 2}, 10), result_row("is", 3.0, "higher", {}, 10)])
write_parquet(frame, out + "/r.parquet", provenance({"b": 1, "a": 2}))
"""


def _write_in_a_fresh_process(folder, umask: int) -> None:
    folder.mkdir()
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    subprocess.run([sys.executable, "-c", f"import os; os.umask({umask}); exec({WRITE!r})", str(folder)],
                   check=True, env=env)


def test_identical_content_gives_identical_bytes_and_the_umask_is_respected(tmp_path):
    _write_in_a_fresh_process(tmp_path / "one", 0o022)
    _write_in_a_fresh_process(tmp_path / "two", 0o027)
    for name in ("t.safetensors", "r.parquet"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
        assert stat.S_IMODE((tmp_path / "one" / name).stat().st_mode) == 0o644  # not mkstemp's 0600
        assert stat.S_IMODE((tmp_path / "two" / name).stat().st_mode) == 0o640
