"""Helpers for tests that drive Snakemake as a user does (subprocess, dry-run job tables)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from diffusability.snakemake_output import job_counts


def run_snakemake(exe: str, workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([exe, *args], cwd=workdir, capture_output=True, text=True, timeout=timeout)


def planned_jobs(exe: str, workdir: Path, *args: str, targets: tuple[str, ...] = ()) -> dict[str, int]:
    """{rule: count} of a dry run towards ``targets`` (default target when none; {} when nothing is to be done)."""
    result = run_snakemake(exe, workdir, *targets, "-n", "--cores", "1", *args, "--quiet", "rules", timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return job_counts(output)


def expected_full_counts(config: dict) -> dict[str, int]:
    """The job count per rule of a study from scratch, derived from the config."""
    n_tok, n_bb = len(config["tokenizers"]), len(config["backbones"])
    grid = config["sampling"].get("cfg_scales", [1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0])
    n_repeats = config.get("repeats", 1)  # a model and a sample set per seed repeat
    n_samples = n_tok * n_repeats * sum(len(b.get("cfg_scales") or grid) for b in config["backbones"].values())
    untrained = config["sampling"].get("untrained_baseline", True)
    counts = {
        "prepare_data": 1, "train_teacher": 1,
        "train_tokenizer": n_tok, "reconstruction": n_tok, "encode": n_tok, "latent_metrics": n_tok,
        "train_diffusion": n_tok * n_bb * n_repeats, "sample": n_samples, "generation_metrics": n_samples,
        "aggregate": 1, "correlate": 1, "predictions": 1, "figures": 1, "summary": 1, "all": 1,
    }
    if config["sampling"].get("trajectories", 64) > 0:
        counts["trajectory_metrics"] = n_samples
    metrics = config.get("metrics") or {}
    if (metrics.get("tokenizer") or {}).get("enabled"):
        counts["tokenizer_metrics"] = n_tok
    if (metrics.get("model") or {}).get("enabled"):
        counts["model_metrics"] = n_tok * n_bb
    if untrained:
        counts["sample_untrained"] = n_tok * n_bb
        counts["untrained_generation_metrics"] = n_tok * n_bb
    return counts


def expected_chain_counts(config: dict, retrain_teacher: bool = False) -> dict[str, int]:
    """Jobs of ONE tokenizer's chain plus the final aggregation."""
    one = dict(config, tokenizers={"x": None})
    counts = expected_full_counts(one)
    counts.pop("prepare_data")
    if not retrain_teacher:
        counts.pop("train_teacher")
    return counts


def small_study(repo: Path) -> dict:
    """The smoke config cut to two tokenizers, one backbone, one guidance scale (the workflow tests
    that run a study several times: rerun, cache, kill soak)."""
    import yaml

    config = yaml.safe_load((repo / "config" / "smoke.yaml").read_text())
    config["tokenizers"] = {"baseline": config["tokenizers"]["baseline"], "kl-1e-3": config["tokenizers"]["kl-1e-3"]}
    config["sampling"].update(cfg_scales=[1.0], trajectories=0, untrained_baseline=False, num_samples=32,
                              batch_size=32)
    config["metrics"] = {"enabled": ["lnc"], "params": {"lnc": {"k": 3}}}
    config["repeats"] = 1
    return config


def checkout(repo: Path, where: Path, config: dict) -> Path:
    """A fresh copy of the repository's workflow (Snakefile, workflow/ with the package, config/), no
    results and no .snakemake; run it with :func:`snakemake_in` so its jobs import the copied package."""
    import yaml

    where.mkdir(parents=True)
    shutil.copy(repo / "Snakefile", where / "Snakefile")
    shutil.copytree(repo / "workflow", where / "workflow", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (where / "config").mkdir()
    (where / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return where


def snakemake_in(exe: str, work: Path, cache: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Snakemake in a :func:`checkout`: its own package first on PYTHONPATH, ``cache`` as the output cache."""
    env = {**os.environ, "PYTHONPATH": str(work / "workflow"), "SNAKEMAKE_OUTPUT_CACHE": str(cache)}
    return subprocess.run([exe, *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout)


def study_tables(work: Path) -> dict:
    """{file name: DataFrame} of a finished study's final tables, timing columns left out."""
    import pandas as pd

    out = {}
    for path in sorted((work / "results" / "tables").glob("*.parquet")):
        frame = pd.read_parquet(path)
        out[path.name] = frame.drop(columns=[c for c in frame.columns if c in ("seconds",)])
    return out
