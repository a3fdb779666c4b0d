"""The DAG of the embedded default and the SLURM profile, by dry runs (no job is executed)."""

from __future__ import annotations

import yaml

from workflow_helpers import expected_full_counts, planned_jobs, run_snakemake


def _default(repo):
    return yaml.safe_load((repo / "config" / "config.yaml").read_text())


def test_default_dag_has_every_stage(repo, snakemake_exe, workdir_factory):
    config = _default(repo)
    work = workdir_factory(config)
    assert planned_jobs(snakemake_exe, work) == expected_full_counts(config)


def test_cluster_profile_dry_run(repo, snakemake_exe, workdir_factory):
    """`snakemake --cores all --profile cluster -n` works as written from the repo root."""
    work = workdir_factory(_default(repo))
    (work / "cluster").symlink_to(repo / "cluster")
    result = run_snakemake(snakemake_exe, work, "--cores", "all", "--profile", "cluster", "-n", timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "train_diffusion" in result.stdout + result.stderr


def test_cluster_profile_gpu_rules_have_no_tasks(repo):
    profile = yaml.safe_load((repo / "cluster" / "config.yaml").read_text())
    gpu_rules = {rule: res for rule, res in profile["set-resources"].items() if "gpu" in res}
    assert {"train_tokenizer", "train_diffusion", "sample"} <= set(gpu_rules)
    for rule, resources in gpu_rules.items():
        assert "tasks" not in resources and "tasks_per_gpu" not in resources, rule
        assert {"runtime", "mem_mb"} <= set(resources), rule
    assert "mtime" not in str(profile.get("rerun-triggers", ""))
