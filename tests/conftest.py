"""Shared fixtures: the repository root, the Snakemake executable, small thread counts."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Tests share two cores; one intra-op thread per process keeps parallel subprocesses fair.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def snakemake_exe() -> str:
    candidate = Path(sys.executable).parent / "snakemake"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("snakemake")
    if not found:
        pytest.skip("snakemake is not installed")
    return found


@pytest.fixture()
def workdir_factory(tmp_path_factory):
    """A fresh working directory laid out like the repository root (Snakefile, workflow/ and
    config/config.yaml), where ``config`` (a dict) is the config — as a user would run it."""
    import yaml

    def make(config: dict, name: str = "work") -> Path:
        work = tmp_path_factory.mktemp(name)
        (work / "Snakefile").symlink_to(REPO / "Snakefile")
        (work / "workflow").symlink_to(REPO / "workflow")
        (work / "config").mkdir()
        (work / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        return work

    return make
