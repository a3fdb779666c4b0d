"""Wall time of the dry run of the full paper study (config/paper.yaml, about 6,300 jobs): goal ≤ 15 s.

Lays out a temporary working directory like the repository root (Snakefile and workflow/ linked,
config/paper.yaml with its /path/to/ placeholders pointed at empty stand-in folders and files, so
that the dry run plans exactly the jobs of a real one — the shipped placeholders would add the
one stand-in job of missing user files),
then times, as a user runs them (subprocesses, median of ``--repeat``):

- ``snakemake --version``                    CLI start-up (imports),
- ``snakemake --list-rules``                 + Snakefile parse and config validation, no DAG,
- ``snakemake -n --quiet rules``             + the DAG of every job (the number that matters),

and prints the job count per rule of the dry run. The phase split is the difference of
consecutive rows. ``--profile N`` also runs the dry run in-process under cProfile
(``snakemake.cli.main``) and prints the N functions with the most cumulative time.

Usage: ``python benchmarks/bench_paper_dag.py [--repeat 3] [--profile 25]``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diffusability.snakemake_output import job_counts

REPO = Path(__file__).resolve().parent.parent
GOAL_SECONDS = 15.0
DRY_RUN_ARGS = ("-n", "--cores", "1", "--quiet", "rules", "--configfile", "config/paper.yaml")


def lay_out_workdir(work: Path) -> None:
    """``work`` as the repository root with the paper study, its placeholders made to exist."""
    import yaml

    (work / "Snakefile").symlink_to(REPO / "Snakefile")
    (work / "workflow").symlink_to(REPO / "workflow")
    (work / "config").mkdir()
    (work / "config" / "config.yaml").write_text((REPO / "config" / "config.yaml").read_text())
    text = (REPO / "config" / "paper.yaml").read_text().replace("/path/to/", f"{work / 'stand-ins'}/")
    (work / "config" / "paper.yaml").write_text(text)
    config = yaml.safe_load(text)
    for key in ("train_dir", "val_dir", "masks_dir"):
        Path(config["data"]["imagenet"][key]).mkdir(parents=True)
    categories = Path(config["data"]["imagenet"]["mask_categories"])
    categories.parent.mkdir(parents=True, exist_ok=True)
    categories.write_text("n01440764\n")
    for key in ("inception_weights", "reference_statistics"):
        path = Path(config["generation"][key])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"placeholder")


def snakemake_exe() -> str:
    candidate = Path(sys.executable).parent / "snakemake"
    return str(candidate) if candidate.exists() else "snakemake"


def timed_run(args: list[str], work: Path) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(args, cwd=work, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{output[-3000:]}")
    return seconds, output


def profile_dry_run(work: Path, top: int) -> str:
    """The ``top`` functions by cumulative time of an in-process dry run (snakemake.cli.main)."""
    from snakemake.cli import main as snakemake_main

    profiler = cProfile.Profile()
    previous = Path.cwd()
    os.chdir(work)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            profiler.enable()
            try:
                snakemake_main(list(DRY_RUN_ARGS))
            except SystemExit:
                pass
            finally:
                profiler.disable()
    finally:
        os.chdir(previous)
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(top)
    return stream.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per row (the median is shown)")
    parser.add_argument("--profile", type=int, default=0, help="also profile in-process; show this many functions")
    args = parser.parse_args()

    exe = snakemake_exe()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lay_out_workdir(work)
        rows = [("snakemake --version (start-up)", [exe, "--version"]),
                ("--list-rules (+ parse, config validation)",
                 [exe, "--list-rules", "--configfile", "config/paper.yaml"]),
                ("-n --quiet rules (+ DAG of all jobs)", [exe, *DRY_RUN_ARGS])]
        timings, dry_output = [], ""
        for label, command in rows:
            runs = []
            for _ in range(args.repeat):
                seconds, output = timed_run(command, work)
                runs.append(seconds)
            timings.append((label, statistics.median(runs), runs))
            dry_output = output
        counts = job_counts(dry_output)

        print(f"config/paper.yaml dry run on {os.cpu_count()} CPU(s), median of {args.repeat}")
        print(f"{'step':<45} {'wall s':>8}  runs")
        for label, median, runs in timings:
            print(f"{label:<45} {median:8.2f}  {', '.join(f'{r:.2f}' for r in runs)}")
        dry = timings[-1][1]
        print(f"phases: start-up {timings[0][1]:.2f} s, parse+validation {timings[1][1] - timings[0][1]:.2f} s, "
              f"DAG {timings[2][1] - timings[1][1]:.2f} s")
        print(f"dry run {dry:.2f} s — goal ≤ {GOAL_SECONDS:.0f} s: {'met' if dry <= GOAL_SECONDS else 'MISSED'}")
        print()
        print(f"{'rule':<30} {'jobs':>6}")
        for rule, count in counts.items():
            print(f"{rule:<30} {count:>6}")
        print(f"{'total':<30} {sum(counts.values()):>6}")

        if args.profile:
            print()
            print(profile_dry_run(work, args.profile))


if __name__ == "__main__":
    main()
