"""Importing what others trained: existing latents and a trained diffusion model, checked, then used."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from diffusability.cli import main
from diffusability.diffusion.train import train_diffusion
from diffusability.io import save_tensors, write_json
from workflow_helpers import planned_jobs

TOKENIZER = {"architecture": "conv", "latent_channels": 4, "channel_mult": [1, 2, 2]}  # 32 px → 8×8


def _latents(folder, n=24, channels=4, side=8, classes=3, stats=None):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % classes
    latents = 2.0 + 3.0 * torch.randn(n, channels, side, side, generator=g)
    save_tensors(folder / "train.safetensors", {"latents": latents, "labels": labels})
    save_tensors(folder / "val.safetensors", {"latents": latents[:12], "labels": labels[:12],
                                              "masks": torch.ones(12, side, side, dtype=torch.bool)})
    flat = latents.double().transpose(0, 1).reshape(channels, -1)
    mean, std = flat.mean(1).float(), flat.std(1).float()
    save_tensors(folder / "stats.safetensors", stats or {"mean": mean, "std": std})
    return latents, labels, mean, std


@pytest.fixture()
def study(tmp_path):
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    write_json(tokenizer / "config.json", TOKENIZER)
    source = tmp_path / "source"
    source.mkdir()
    return tokenizer, source


def _import(tmp_path, tokenizer, source, capsys):
    status = main(["import-latents", "--source", str(source), "--tokenizer", str(tokenizer), "--spec",
                   json.dumps({"image_size": 32, "n_classes": 3}), "--out", str(tmp_path / "out")])
    return status, capsys.readouterr().err


def test_good_latents_are_copied_byte_for_byte(tmp_path, study, capsys):
    tokenizer, source = study
    _latents(source)
    status, text = _import(tmp_path, tokenizer, source, capsys)
    assert status == 0, text
    for name in ("train", "val", "stats"):
        assert (tmp_path / "out" / f"{name}.safetensors").read_bytes() == (source / f"{name}.safetensors").read_bytes()


@pytest.mark.parametrize("kind, message", [
    ("channels", "(N, 8, 8, 8) but the study's tokenizer makes (N, 4, 8, 8)"),
    ("stats", "not the normalisation of these latents"),
    ("labels", "labels must lie in [0, 3)"),
])
def test_latents_that_do_not_fit_the_study_are_refused_naming_the_file(tmp_path, study, capsys, kind, message):
    tokenizer, source = study
    if kind == "channels":
        _latents(source, channels=8)
    elif kind == "stats":
        _latents(source, stats={"mean": torch.zeros(4), "std": torch.ones(4)})  # not these latents' statistics
    else:
        _latents(source, classes=5)
    status, text = _import(tmp_path, tokenizer, source, capsys)
    assert status == 2 and message in text and "safetensors" in text, text
    assert not (tmp_path / "out").exists()


def test_a_trained_model_is_imported_when_it_fits_the_latents(tmp_path, study, capsys):
    _, source = study
    latents, labels, mean, std = _latents(source)
    spec = dict(depth=1, width=16, heads=2, steps=2, batch_size=8, num_classes=3, name="sit-xs")
    trained = tmp_path / "trained"
    train_diffusion((latents - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1), labels, spec, trained, 3)
    argv = ["train-diffusion", "--latents", str(source), "--spec", json.dumps(spec), "--import-from", str(trained)]
    assert main([*argv, "--out", str(tmp_path / "model")]) == 0
    assert (tmp_path / "model" / "ema.safetensors").read_bytes() == (trained / "ema.safetensors").read_bytes()
    assert not (tmp_path / "model" / "checkpoints").exists()  # nothing was trained
    status = main([*argv[:-2], "--spec", json.dumps({**spec, "num_classes": 5}), "--import-from", str(trained),
                   "--out", str(tmp_path / "wrong")])
    assert status == 2 and "num_classes is 3, the study has 5" in capsys.readouterr().err


def test_the_dag_imports_instead_of_encoding_and_training(repo, snakemake_exe, workdir_factory, tmp_path):
    config = yaml.safe_load((repo / "config" / "smoke.yaml").read_text())
    config["tokenizers"]["baseline"]["latents"] = str(tmp_path)
    config["tokenizers"]["baseline"]["diffusion"] = {"sit-xs": str(tmp_path)}
    config["repeats"] = 1  # an imported model is one checkpoint: no seed repeats (config validation refuses them)
    planned = planned_jobs(snakemake_exe, workdir_factory(config))
    n_tok = len(config["tokenizers"])
    assert planned["import_latents"] == 1 and planned["encode"] == n_tok - 1
    assert planned["train_diffusion"] == n_tok  # one of them imports (train-diffusion --import-from)
