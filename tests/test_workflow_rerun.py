"""A rerun after a change rebuilds the changed chain from scratch — never returns an old model.

One small study (two tokenizers, one backbone, one guidance scale) is run for real (a copy of the
session's finished ``small_study_checkout``, conftest.py, so the suite runs that study once); then an input
(``data.n_train``) and a setting (the tokenizer's ``lr``) are changed in turn and the default
target is rerun, exactly as a user would. After each rerun the tokenizer and diffusion weights
must equal those of a straight, from-scratch training on the new inputs (run here through the
same commands into separate folders): a resumed or rewritten old model cannot pass.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from diffusability.io import load_tensors
from diffusability.workflow import layout
from workflow_helpers import planned_jobs, run_snakemake

pytestmark = pytest.mark.slow

TOK, BB = "baseline", "sit-xs"


def _run(snakemake_exe, work):
    result = run_snakemake(snakemake_exe, work, "--cores", "2", timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def _same_weights(a, b) -> bool:
    x, y = load_tensors(a), load_tensors(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _straight_runs(work, config, tmp):
    """Tokenizer and diffusion trained from scratch, through the commands, on the study's current inputs."""
    from diffusability.workflow import config as cfg

    validated = cfg.validate_config(copy.deepcopy(config))
    run = [sys.executable, "-m", "diffusability"]
    results = work / "results"
    subprocess.run([*run, "train-tokenizer", "--spec", json.dumps(cfg.tokenizer_spec(validated, TOK)),
                    "--train", str(results / "data" / "train.safetensors"), "--teacher", str(results / "teacher"),
                    "--out", str(tmp / "tokenizer")], check=True, capture_output=True)
    subprocess.run([*run, "train-diffusion", "--latents", str(results / "latents" / TOK),
                    "--spec", json.dumps(cfg.backbone_spec(validated, TOK, BB)), "--out", str(tmp / "diffusion")],
                   check=True, capture_output=True)
    return tmp / "tokenizer" / "model.safetensors", tmp / "diffusion" / "ema.safetensors"


def _assert_rebuilt_from_scratch(work, config, tmp):
    tokenizer, ema = _straight_runs(work, config, tmp)
    results = work / "results"
    assert _same_weights(results / "tokenizers" / TOK / "model.safetensors", tokenizer)
    assert _same_weights(work / layout.diffusion_file(TOK, BB, "ema.safetensors"), ema)
    for log in (work / layout.log_file("train_tokenizer", TOK), work / layout.log_file("train_diffusion", TOK, BB, "seed0")):
        text = log.read_text()
        assert "resum" not in text.split("moved to")[-1], text[-2000:]  # no resume after the set-aside
        assert "already complete" not in text


def test_a_changed_input_or_setting_rebuilds_the_chain_from_scratch(snakemake_exe, small_study_checkout, tmp_path):
    # the finished study, copied with its Snakemake metadata; its jobs import the copy's package
    work = shutil.copytree(small_study_checkout["work"], tmp_path / "rerun", symlinks=True)
    config = copy.deepcopy(small_study_checkout["config"])
    assert planned_jobs(snakemake_exe, work) == {}   # the copy is a finished study
    old_model = load_tensors(work / "results" / "tokenizers" / TOK / "model.safetensors")

    # Finding A: more training images; the data, teacher, tokenizer and diffusion chain reruns.
    config["data"]["n_train"] = 320
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    _run(snakemake_exe, work)
    assert (work / "results" / "tokenizers" / TOK / "checkpoints.superseded").is_dir()
    _assert_rebuilt_from_scratch(work, config, tmp_path / "after-input")
    new_model = load_tensors(work / "results" / "tokenizers" / TOK / "model.safetensors")
    assert any(not torch.equal(old_model[k], new_model[k]) for k in old_model)

    # Finding B: one tokenizer setting; no error, no manual deletion, the chain follows by itself.
    config["tokenizers"][TOK]["lr"] = 0.002
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    _run(snakemake_exe, work)
    _assert_rebuilt_from_scratch(work, config, tmp_path / "after-setting")
    assert planned_jobs(snakemake_exe, work) == {}

    # Finding B: a changed `teacher` (a path, not part of the spec) is a rerun trigger too.
    vfm = tmp_path / "vfm"
    vfm.mkdir()
    (vfm / "config.json").write_text("{}")
    changed = copy.deepcopy(config)
    changed["teachers"] = {"vfm": str(vfm)}
    changed["tokenizers"][TOK]["teacher"] = "vfm"
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    assert planned_jobs(snakemake_exe, work).get("train_tokenizer") == 1
