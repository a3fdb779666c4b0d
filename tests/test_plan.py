"""`diffusability plan`: job counts against independent counts (typed from the studies, and Snakemake's own
dry run), FLOP figures against the DiT paper, GPU-hours against LightningDiT's published throughput."""

from __future__ import annotations

import csv

import pytest
import yaml

from diffusability.workflow import config as cfg
from diffusability import plan
from diffusability.cli import main
from workflow_helpers import expected_full_counts, planned_jobs

#: the single jobs of the analysis (every rule of analysis.smk) and the default target
SINGLETONS = {"aggregate": 1, "correlate": 1, "predictions": 1, "figures": 1, "summary": 1, "all": 1}


def study(repo, name: str) -> dict:
    return cfg.validate_config(yaml.safe_load((repo / "config" / name).read_text()))


def test_paper_counts(repo):
    """86 Table 1 rows × 4 backbones; B models over the 7-point grid 1.0–3.0, XL models at 1.0."""
    with open(repo / "config" / "paper_tokenizers.csv", newline="") as handle:
        n_tok = sum(1 for _ in csv.DictReader(handle))
    grid = [1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0]
    samples = n_tok * (2 * len(grid) + 2)
    expected = {
        "imagenet_manifest": 2, "imagenet_shards": 2, "train_teacher": 1, "reference_stats": 1,
        "representation_reference_stats": 5,  # FDr6: the five spaces besides the Inception
        "train_tokenizer": n_tok, "reconstruction": n_tok, "encode": n_tok, "latent_metrics": n_tok,
        "tokenizer_metrics": n_tok, "train_diffusion": n_tok * 4,
        "sample": samples, "generation_metrics": samples, "trajectory_metrics": samples,
        "representation_metrics": samples, **SINGLETONS,
    }
    assert plan.job_counts(study(repo, "paper.yaml")) == expected
    assert samples == 1376


def test_smoke_counts(repo):
    """smoke.yaml: 4 tokenizers × 1 backbone × 2 scales × its seed repeats (a model and a sample set per repeat),
    untrained baselines, trajectories, both metric rules."""
    smoke = study(repo, "smoke.yaml")
    r = smoke["repeats"]
    expected = {
        "prepare_data": 1, "train_teacher": 1, "train_tokenizer": 4, "reconstruction": 4, "encode": 4,
        "latent_metrics": 4, "tokenizer_metrics": 4, "train_diffusion": 4 * r, "model_metrics": 4,
        "sample": 8 * r, "generation_metrics": 8 * r, "trajectory_metrics": 8 * r, "sample_untrained": 4,
        "untrained_generation_metrics": 4, **SINGLETONS,
    }
    assert plan.job_counts(smoke) == expected


@pytest.mark.slow
def test_smoke_counts_are_snakemakes(repo, snakemake_exe, workdir_factory):
    """The plan's counts are the dry run's, rule for rule: no rule of the DAG is missing from the plan (a
    left-out single job, like `predictions` once was, fails here) and the plan lists no rule the DAG lacks."""
    work = workdir_factory(yaml.safe_load((repo / "config" / "smoke.yaml").read_text()), name="plan_smoke")
    assert planned_jobs(snakemake_exe, work) == plan.job_counts(study(repo, "smoke.yaml"))


def test_default_counts_follow_repeats_and_the_dags_count(repo):
    """The embedded default (two seed repeats) against the count its DAG test checks against Snakemake's dry run
    (tests/test_workflow_dag.py): a diffusion model and a sample set per repeat, the rest once."""
    raw = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    counts = plan.job_counts(cfg.validate_config(raw))
    assert counts == expected_full_counts(raw)
    once = plan.job_counts(cfg.validate_config(dict(raw, repeats=1)))
    for rule in counts:
        factor = 2 if rule in ("train_diffusion", "sample", "generation_metrics", "trajectory_metrics") else 1
        assert counts[rule] == factor * once[rule], rule


def test_transformer_flop_is_the_dit_papers():
    """DiT's Table 4 (Gflops = multiply-adds): DiT-B/2 23.01, DiT-XL/2 118.64 at 256 tokens."""
    assert plan.transformer_flop(12, 768, 256, adaln=True) == pytest.approx(2 * 23.01e9, rel=0.01)
    assert plan.transformer_flop(28, 1152, 256, adaln=True) == pytest.approx(2 * 118.64e9, rel=0.01)


def test_lightningdit_xl_training_is_the_published_throughput(repo):
    """LightningDiT README: 64 ImageNet epochs of XL/1 in about 10 hours on 8 H800 = 80 GPU-hours, so
    Table 2's 100k steps × 1024 images take 102.4 M / (64 · 1,281,167) × 80 GPU-hours."""
    paper = study(repo, "paper.yaml")
    one = dict(paper, tokenizers={"t01-c32-baseline": paper["tokenizers"]["t01-c32-baseline"]},
               backbones={"lightningdit-xl": paper["backbones"]["lightningdit-xl"]})
    published = 100_000 * 1024 / (64 * 1_281_167) * 80
    assert plan.gpu_hours(one)["train_diffusion"] == pytest.approx(published, rel=0.03)


def test_sampling_hours_double_with_guidance(repo):
    paper = study(repo, "paper.yaml")
    one = dict(paper, tokenizers={"t01-c32-baseline": paper["tokenizers"]["t01-c32-baseline"]},
               backbones={"sit-b": paper["backbones"]["sit-b"]})
    unguided = dict(one, sampling=dict(one["sampling"], cfg_scales=[1.0]))
    guided = dict(one, sampling=dict(one["sampling"], cfg_scales=[2.0]))
    decode = 50_000 * plan.CONV_DECODER_FLOP / plan.EFFECTIVE_FLOPS["fp32"] / 3600
    ratio = (plan.gpu_hours(guided)["sample"] - decode) / (plan.gpu_hours(unguided)["sample"] - decode)
    assert ratio == pytest.approx(2.0)


def test_repeats_multiply_the_models_and_samples_hours(repo):
    paper = study(repo, "paper.yaml")
    one = dict(paper, tokenizers={"t01-c32-baseline": paper["tokenizers"]["t01-c32-baseline"]})
    single, triple = plan.gpu_hours(one), plan.gpu_hours(dict(one, repeats=3))
    for rule in ("train_diffusion", "sample", "generation_metrics", "representation_metrics"):
        assert triple[rule] == pytest.approx(3 * single[rule]), rule
    for rule in ("train_tokenizer", "encode", "tokenizer_metrics"):
        assert triple[rule] == single[rule], rule


def test_ifid_in_the_inception_adds_two_inception_passes_per_query(repo):
    """The paper's iFID (feature_net: inception) featurises every query image and its decoded midpoint."""
    paper = study(repo, "paper.yaml")
    assert cfg.ifid_feature_net(paper) == "inception"
    one = dict(paper, tokenizers={"t01-c32-baseline": paper["tokenizers"]["t01-c32-baseline"]})
    tokenizer = one["metrics"]["tokenizer"]
    domain = dict(one, metrics=dict(one["metrics"], tokenizer=dict(tokenizer, ifid=dict(tokenizer["ifid"],
                                                                                            feature_net="domain"))))
    queries = tokenizer["ifid"].get("max_queries") or paper["data"]["n_val"]
    extra = 2 * queries * plan.INCEPTION_FLOP / plan.EFFECTIVE_FLOPS["fp32"] / 3600
    assert plan.gpu_hours(one)["tokenizer_metrics"] - plan.gpu_hours(domain)["tokenizer_metrics"] == \
        pytest.approx(extra)


def test_cli_prints_the_paper_table(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    assert main(["plan", "--configfile", "config/paper.yaml"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line and line.split()[0].isidentifier()}
    profile = yaml.safe_load((repo / "cluster" / "config.yaml").read_text())["set-resources"]
    assert rows["sample"][1] == "1,376"
    assert rows["train_tokenizer"][2] == str(profile["train_tokenizer"]["gpu"])
    assert rows["train_diffusion"][2] == str(profile["train_diffusion"]["gpu"])
    assert rows["latent_metrics"][3] == "-"  # not modelled
    total = rows["total"]
    assert total[1] == f"{sum(plan.job_counts(study(repo, 'paper.yaml')).values()):,}"
    assert float(total[2].replace(",", "")) == pytest.approx(sum(
        h for h in plan.gpu_hours(study(repo, "paper.yaml")).values() if h), abs=1)


def test_cli_without_profile_leaves_gpus_unknown(repo, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no ./cluster here
    assert main(["plan", "--configfile", str(repo / "config" / "smoke.yaml")]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("sample "))
    assert line.split()[2] == "?"


def test_cli_names_a_bad_configfile(repo, tmp_path, capsys):
    assert main(["plan", "--configfile", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text((repo / "config" / "smoke.yaml").read_text().replace("num_steps: 8", "num_steps: zero"))
    assert main(["plan", "--configfile", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "sampling.num_steps" in err
    assert main(["plan", "--configfile", str(repo / "config" / "smoke.yaml"),
                 "--profile", str(tmp_path / "nowhere")]) == 2
    assert "--profile" in capsys.readouterr().err
