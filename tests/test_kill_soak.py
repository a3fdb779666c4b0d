"""Kill anywhere: SIGKILL the whole Snakemake process group at seeded random moments, resume with the
documented command, and end with the tables of an uninterrupted run and nothing half-written.

The documented resume command (README, "Resuming after a crash") is

    snakemake --unlock && snakemake --cores all --rerun-incomplete

``SOAK_KILLS`` sets the number of kills (default 5; CI runs the default), ``SOAK_SEED`` their seed.
Each kill point, what was running then and the outcome are printed (run pytest with ``-s``).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from workflow_helpers import study_tables

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("SOAK_KILLS", "5"))
SEED = int(os.environ.get("SOAK_SEED", "0"))
#: names that only exist while something is being written (atomic temporaries, resumable partials)
HALF_WRITTEN = ("*.tmp*", "*.partial", "*.progress.json")


def _start(exe: str, work: Path, *args: str) -> subprocess.Popen:
    # a session of its own: the kill reaches Snakemake and every job it started
    return subprocess.Popen([exe, *args], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _run(exe: str, work: Path, *args: str, timeout: int = 1200) -> int:
    return subprocess.run([exe, *args], cwd=work, capture_output=True, text=True, timeout=timeout).returncode


def _running_rules(work: Path) -> list[str]:
    """Rules whose log files were written in the last seconds (what the kill interrupted, roughly)."""
    now = time.time()
    return sorted({p.relative_to(work / "logs").parts[0] for p in (work / "logs").rglob("*.log")
                   if now - p.stat().st_mtime < 5}) if (work / "logs").exists() else []


@pytest.mark.xfail(strict=False, reason="issue 18: written at the end of a session; its first complete run had not "
                                       "finished when the session stopped (an XPASS is the expected outcome)")
def test_kills_anywhere_then_resume_give_the_uninterrupted_tables(snakemake_exe, workdir_factory,
                                                                  small_study_checkout):
    """The reference is the session's uninterrupted run of the same study (conftest.py)."""
    reference, config = small_study_checkout["work"], small_study_checkout["config"]
    duration = small_study_checkout["seconds"]
    work = workdir_factory(config, "soak")
    rng = random.Random(SEED)
    outcomes = []
    for kill in range(KILLS):
        delay = rng.uniform(2.0, 0.9 * duration)
        process = _start(snakemake_exe, work, "--cores", "2", "--rerun-incomplete")
        try:
            process.wait(timeout=delay)
            outcomes.append(f"kill {kill + 1}: the run finished before {delay:.1f} s")
            break
        except subprocess.TimeoutExpired:
            running = _running_rules(work)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            outcomes.append(f"kill {kill + 1} at {delay:.1f} s during {running or ['start-up']}")
        # the documented resume command, first half: the killed Snakemake left its lock behind
        assert _run(snakemake_exe, work, "--unlock") == 0
    assert _run(snakemake_exe, work, "--cores", "2", "--rerun-incomplete") == 0, "the resumed run failed"
    print("\n".join(outcomes))

    half_written = [str(p.relative_to(work)) for pattern in HALF_WRITTEN for p in (work / "results").rglob(pattern)]
    assert not half_written, half_written
    expected, got = study_tables(reference), study_tables(work)
    assert expected.keys() == got.keys()
    for name in expected:
        pd.testing.assert_frame_equal(expected[name], got[name], check_exact=False, rtol=1e-9, obj=name)
