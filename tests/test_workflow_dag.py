"""The DAG of the embedded default, the SLURM profile and the paper study, by dry runs (no job is executed)."""

from __future__ import annotations

import csv

import pytest
import yaml

from diffusability.snakemake_output import job_counts
from workflow_helpers import expected_full_counts, planned_jobs, run_snakemake


def _default(repo):
    return yaml.safe_load((repo / "config" / "config.yaml").read_text())


def test_default_dag_has_every_stage(repo, snakemake_exe, workdir_factory):
    config = _default(repo)
    work = workdir_factory(config)
    assert planned_jobs(snakemake_exe, work) == expected_full_counts(config)


def test_cluster_profile_dry_run(repo, snakemake_exe, workdir_factory, tmp_path, monkeypatch):
    """`snakemake --cores all --profile cluster -n` works as written from the repo root, with the output
    cache folder exported as the README says (the profile turns the cache on)."""
    monkeypatch.setenv("SNAKEMAKE_OUTPUT_CACHE", str(tmp_path / "cache"))
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


# ----------------------------------------------------------------------------- the paper study

# The protocol of config/paper.yaml, typed from the paper: Table 1's 86 tokenizers (config/paper_tokenizers.csv)
# × Table 2's 4 backbones; SiT-B and LightningDiT-B over the guidance grid 1.0–3.0 (its 7 points are the config's
# interpretation), SiT-XL and LightningDiT-XL at 1.0; trajectories recorded; FDr6 = the Inception + 5 spaces.
PAPER_GRID = [1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0]
FDR_SPACES = 5


def _paper_workdir(repo, workdir_factory):
    """A working directory with config/config.yaml (the demo) and config/paper.yaml exactly as shipped."""
    work = workdir_factory(_default(repo), name="paper")
    (work / "config" / "paper.yaml").write_text((repo / "config" / "paper.yaml").read_text())
    return work


def _table1_rows(repo) -> int:
    with open(repo / "config" / "paper_tokenizers.csv", newline="") as handle:
        return sum(1 for _ in csv.DictReader(handle))


@pytest.mark.slow
def test_paper_dry_run_plans_the_whole_study_as_shipped(repo, snakemake_exe, workdir_factory):
    """`snakemake -n --configfile config/paper.yaml` with its /path/to/ placeholders: only warnings, and
    the per-rule job counts of the protocol (the demo's tokenizers do not join: --configfile replaces it)."""
    work = _paper_workdir(repo, workdir_factory)
    result = run_snakemake(snakemake_exe, work, "-n", "--cores", "1", "--configfile", "config/paper.yaml",
                           "--quiet", "rules", timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    for key in ("data.imagenet.train_dir: /path/to/imagenet/train", "generation.inception_weights: /path/to/",
                "generation.representations.siglip: /path/to/", "teachers.cradio-b: /path/to/"):
        assert key in output, key
    tokenizers, backbones = _table1_rows(repo), 4
    samples = tokenizers * (2 * len(PAPER_GRID) + 2)
    expected = {
        "imagenet_manifest": 2, "imagenet_shards": 2, "train_teacher": 1, "reference_stats": 1,
        "representation_reference_stats": FDR_SPACES,
        "train_tokenizer": tokenizers, "reconstruction": tokenizers, "encode": tokenizers,
        "latent_metrics": tokenizers, "tokenizer_metrics": tokenizers, "train_diffusion": tokenizers * backbones,
        "sample": samples, "generation_metrics": samples, "trajectory_metrics": samples,
        "representation_metrics": samples,
        # the dry-run stand-in for the missing files that rules read (weights, reference batch, FDr models)
        "missing_user_files": 1,
    }
    counts = job_counts(output)
    assert {rule: counts.get(rule) for rule in expected} == expected
    # every other rule is a single aggregation job (aggregate, correlate, figures, summary, all, ...)
    assert {rule: n for rule, n in counts.items() if rule not in expected and n != 1} == {}
    assert {"aggregate", "summary", "all"} <= set(counts)
    assert not (work / "results").exists()


@pytest.mark.slow
def test_paper_real_run_stops_on_the_placeholders(repo, snakemake_exe, workdir_factory):
    """Without -n the placeholders stop the workflow before any job, each named by its key."""
    work = _paper_workdir(repo, workdir_factory)
    result = run_snakemake(snakemake_exe, work, "--cores", "1", "--configfile", "config/paper.yaml", timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for key in ("data.imagenet.train_dir: /path/to/imagenet/train is not a directory",
                "generation.inception_weights: /path/to/pt_inception-2015-12-05-6726825d.pth not found",
                "generation.representations.clip: /path/to/", "teachers.pe-b: /path/to/",
                ".lpips_weights (and 85 other tokenizers): /path/to/"):
        assert key in output, key
    assert not (work / "results").exists() and not (work / "logs").exists()
