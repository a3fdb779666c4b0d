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


@pytest.fixture(scope="session")
def small_study_checkout(snakemake_exe, tmp_path_factory):
    """One uninterrupted run of the small study in a copied checkout with an output cache, shared by the
    cache and kill-soak tests: {"work", "cache", "config", "seconds"}."""
    import time

    from workflow_helpers import checkout, small_study, snakemake_in

    root = tmp_path_factory.mktemp("small-study")
    cache = root / "cache"
    cache.mkdir()
    config = small_study(REPO)
    work = checkout(REPO, root / "a", config)
    started = time.perf_counter()
    result = snakemake_in(snakemake_exe, work, cache, "--cores", "2", "--cache")
    seconds = time.perf_counter() - started
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return {"work": work, "cache": cache, "config": config, "seconds": seconds}


#: modules whose tests share the session's ``small_study_checkout`` (one run of the small study)
SMALL_STUDY_MODULES = {"test_workflow_cache.py", "test_workflow_rerun.py", "test_kill_soak.py"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the marker into the node id
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``make test``: ``-n 2 --dist loadgroup``) every module runs in one worker, so
    its module fixtures (a study, a SLURM cluster) are built once; the modules that share the small
    study's session fixture go to one worker together."""
    for item in items:
        module = item.nodeid.split("::")[0].rsplit("/", 1)[-1]
        group = "small_study" if module in SMALL_STUDY_MODULES else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_finish(session):
    """Fail at once if xdist did not group the tests (it writes the group into the node id; a pytest
    that ignores that would spread a module over both workers and build its fixtures twice)."""
    if getattr(session.config.option, "loadgroup", False):
        ungrouped = [item.nodeid for item in session.items if "@" not in item.nodeid]
        if ungrouped:
            raise pytest.UsageError(f"pytest-xdist did not group {len(ungrouped)} tests, e.g. {ungrouped[0]}; "
                                    "pytest and pytest-xdist versions: see envs/test.txt")
