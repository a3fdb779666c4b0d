"""Kill anywhere: SIGKILL the whole Snakemake process group at seeded random moments, resume with the
documented command, and end with the tables of an uninterrupted run and nothing half-written.

The documented resume command (README, "Resuming after a crash") is

    snakemake --unlock && snakemake --cores all --rerun-incomplete

``SOAK_KILLS`` sets the number of kills (default 5; CI runs the default), ``SOAK_SEED`` their seed.
The test makes exactly that many kills happen: a run that finishes before its kill moment is checked
like the final one and the study starts again from nothing. Each kill point, what it interrupted (the
outputs Snakemake had marked incomplete) and the outcome are printed (shown without ``-s`` too).
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from workflow_helpers import checkout, study_tables

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("SOAK_KILLS", "5"))
SEED = int(os.environ.get("SOAK_SEED", "0"))
#: names that only exist while something is being written (atomic temporaries, resumable partials)
HALF_WRITTEN = ("*.tmp*", "*.partial", "*.progress.json")
#: the earliest kill moment after a start (seconds): Snakemake's start-up is a moment like any other
EARLIEST = 2.0


def _env(work: Path) -> dict:
    """The checkout's own package first (its code is the reference run's, whatever the repository holds
    by now), and no output cache: the documented command, nothing taken from the reference's cache."""
    env = {**os.environ, "PYTHONPATH": str(work / "workflow")}
    env.pop("SNAKEMAKE_OUTPUT_CACHE", None)
    return env


def _start(exe: str, work: Path, *args: str) -> subprocess.Popen:
    # a session of its own: the kill reaches Snakemake and every job it started
    return subprocess.Popen([exe, *args], cwd=work, env=_env(work), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _run(exe: str, work: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *args], cwd=work, env=_env(work), capture_output=True, text=True, timeout=timeout)


def _interrupted_outputs(work: Path) -> list[str]:
    """The outputs Snakemake had marked incomplete (its jobs were running): what --rerun-incomplete redoes.

    Snakemake keeps one marker per output under .snakemake/incomplete/, named by the path's urlsafe
    base64, cut into 254-character folders prefixed with '@' when long.
    """
    root = work / ".snakemake" / "incomplete"
    if not root.is_dir():
        return []
    outputs = []
    for marker in root.rglob("*"):
        if marker.is_file() and marker.name != "migration_underway":
            encoded = "".join(part.removeprefix("@") for part in marker.relative_to(root).parts)
            outputs.append(base64.urlsafe_b64decode(encoded).decode())
    return sorted(outputs)


def _check_finished(work: Path, reference: Path) -> None:
    """A finished (resumed) study: nothing half-written under results/, and the reference's tables."""
    half_written = [str(p.relative_to(work)) for pattern in HALF_WRITTEN for p in (work / "results").rglob(pattern)]
    assert not half_written, half_written
    expected, got = study_tables(reference), study_tables(work)
    assert expected.keys() == got.keys()
    for name in expected:
        pd.testing.assert_frame_equal(expected[name], got[name], check_exact=False, rtol=1e-9, obj=name)


def _fresh(work: Path) -> None:
    """Back to a checkout that never ran: no results, logs or Snakemake state."""
    for name in ("results", "logs", ".snakemake"):
        shutil.rmtree(work / name, ignore_errors=True)


def test_kills_anywhere_then_resume_give_the_uninterrupted_tables(snakemake_exe, tmp_path, small_study_checkout,
                                                                  capsys):
    """KILLS real kills (Snakemake alive until the SIGKILL, which ends it), each followed by the documented
    resume; every study that a resumed run finishes has the uninterrupted run's tables (conftest.py's
    session run of the same study, whose copied code this checkout copies again) and nothing half-written.

    A kill moment is drawn after each start from [EARLIEST, start-up + 2 (T - start-up) / (KILLS + 1)],
    T the uninterrupted run's duration and start-up the last `--unlock`'s (it parses the workflow as a
    run does): on average the kills share one study's work, so they fall in every stage and the soak
    costs about one study plus a start-up per kill."""
    reference, config = small_study_checkout["work"], small_study_checkout["config"]
    duration = small_study_checkout["seconds"]
    work = checkout(reference, tmp_path / "soak", config)
    rng = random.Random(SEED)
    report, kills, attempts, startup = [], 0, 0, 0.0
    started = time.monotonic()
    while kills < KILLS:
        attempts += 1
        # a bound, not a retry budget: each fresh start gets a kill unless the study runs in under 2 s
        assert attempts <= 3 * KILLS + 3, "runs keep finishing before their kill moments:\n" + "\n".join(report)
        latest = startup + 2 * max(duration - startup, 0.0) / (KILLS + 1)
        delay = rng.uniform(EARLIEST, max(latest, EARLIEST + 2.0))
        process = _start(snakemake_exe, work, "--cores", "2", "--rerun-incomplete")
        begun = time.monotonic()
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # the whole group ended meanwhile: counted as a finished run below
            process.wait()
        if process.returncode != -signal.SIGKILL:
            # over before its kill moment (or between the timeout and the kill): no kill happened; check
            # what the run left and start again from nothing, so that the next kills hit real work
            ran = time.monotonic() - begun
            assert process.returncode == 0, f"attempt {attempts}: the resumed run failed (rc {process.returncode})"
            _check_finished(work, reference)
            report.append(f"attempt {attempts}: finished after {ran:.1f} s, before its kill at {delay:.1f} s; "
                          "tables equal, nothing half-written; starting again from a fresh state")
            _fresh(work)
            continue
        kills += 1
        # what the kill interrupted: the outputs of the jobs that were running (none: start-up or between jobs)
        interrupted = _interrupted_outputs(work)
        # the documented resume command, first half: the killed Snakemake left its lock behind
        unlock_started = time.monotonic()
        unlock = _run(snakemake_exe, work, "--unlock")
        startup = time.monotonic() - unlock_started
        assert unlock.returncode == 0, (unlock.stdout + unlock.stderr)[-3000:]
        report.append(f"kill {kills} (attempt {attempts}) at {delay:.1f} s: interrupted "
                      f"{interrupted or 'no job (start-up or between jobs)'}; unlocked in {startup:.1f} s")
    final = _run(snakemake_exe, work, "--cores", "2", "--rerun-incomplete")
    report.append(f"resume after kill {kills}: rc {final.returncode}")
    with capsys.disabled():  # the kill points are the soak's result: shown without -s too
        seconds = time.monotonic() - started
        print(f"\nkill soak (seed {SEED}, {KILLS} kills, uninterrupted run {duration:.0f} s, soak {seconds:.0f} s):\n  "
              + "\n  ".join(report))
    assert final.returncode == 0, "the resumed run failed:\n" + (final.stdout + final.stderr)[-3000:]
    assert kills == KILLS
    _check_finished(work, reference)
