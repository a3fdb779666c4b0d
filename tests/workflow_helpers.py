"""Helpers for tests that drive Snakemake as a user does (subprocess, dry-run job tables)."""

from __future__ import annotations

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
    n_samples = n_tok * sum(len(b.get("cfg_scales") or grid) for b in config["backbones"].values())
    untrained = config["sampling"].get("untrained_baseline", True)
    counts = {
        "prepare_data": 1, "train_teacher": 1,
        "train_tokenizer": n_tok, "reconstruction": n_tok, "encode": n_tok, "latent_metrics": n_tok,
        "train_diffusion": n_tok * n_bb, "sample": n_samples, "generation_metrics": n_samples,
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
