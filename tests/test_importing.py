"""Importing what others trained: existing latents and a trained diffusion model, checked, then used."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from diffusability.cli import main
from diffusability.diffusion.train import train_diffusion
from diffusability.io import load_tensors, save_tensors, write_json
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


SPEC = dict(depth=1, width=16, heads=2, steps=2, batch_size=8, num_classes=3, name="sit-xs")


@pytest.fixture()
def trained_by_the_command(tmp_path, study):
    """A model trained by ``train-diffusion`` on the source latents: its config.json records their statistics."""
    _, source = study
    _latents(source)
    assert main(["train-diffusion", "--latents", str(source), "--spec", json.dumps(SPEC),
                 "--out", str(tmp_path / "trained")]) == 0
    return source, tmp_path / "trained"


def _import_model(tmp_path, latents, trained, *extra):
    return main(["train-diffusion", "--latents", str(latents), "--spec", json.dumps(SPEC), "--import-from",
                 str(trained), *extra, "--out", str(tmp_path / "model")])


def test_training_records_the_latent_statistics_it_normalised_with(trained_by_the_command):
    source, trained = trained_by_the_command
    recorded = json.loads((trained / "config.json").read_text())["latent_stats"]
    stats = load_tensors(source / "stats.safetensors")
    assert recorded == {"mean": stats["mean"].tolist(), "std": stats["std"].tolist()}  # float32 values, exactly


def test_an_import_with_the_same_statistics_passes(tmp_path, trained_by_the_command):
    source, trained = trained_by_the_command
    study_latents = tmp_path / "study"
    study_latents.mkdir()
    _latents(study_latents)  # the study's own copy of the same latents
    assert _import_model(tmp_path, study_latents, trained) == 0
    assert (tmp_path / "model" / "config.json").read_bytes() == (trained / "config.json").read_bytes()


@pytest.mark.parametrize("shift, passes", [(0.5e-2, True), (2e-2, False)])
def test_statistics_are_compared_within_the_stated_tolerance(tmp_path, trained_by_the_command, capsys, shift, passes):
    """The study's mean of channel 2 moved by ``shift`` of its std: inside STATS_TOLERANCE (1e-2) it imports,
    beyond it the import exits 2 naming both files, the channel and the two values."""
    from diffusability.diffusion.importing import STATS_TOLERANCE

    source, trained = trained_by_the_command
    stats = load_tensors(source / "stats.safetensors")
    moved = stats["mean"].clone()
    moved[2] += shift * stats["std"][2]
    study_latents = tmp_path / "study"
    study_latents.mkdir()
    _latents(study_latents, stats={"mean": moved, "std": stats["std"]})
    status = _import_model(tmp_path, study_latents, trained)
    err = capsys.readouterr().err
    assert STATS_TOLERANCE == 1e-2
    if passes:
        assert status == 0, err
        return
    assert status == 2, err
    assert f"{trained}/config.json" in err and str(study_latents / "stats.safetensors") in err
    assert f"channel 2 has mean {float(stats['mean'][2]):.6g}" in err and f"{float(moved[2]):.6g}" in err
    assert not (tmp_path / "model").exists()
    # a wider tolerance, stated on the command line, accepts it
    assert _import_model(tmp_path, study_latents, trained, "--stats-tolerance", "0.05") == 0


def test_a_model_without_recorded_statistics_is_imported_with_a_warning(tmp_path, study, caplog):
    """The Python API trains without ``latent_stats`` (like a model of an older version): a warning, no failure."""
    import logging

    _, source = study
    latents, labels, mean, std = _latents(source)
    train_diffusion((latents - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1), labels, SPEC, tmp_path / "old", 3)
    assert "latent_stats" not in json.loads((tmp_path / "old" / "config.json").read_text())
    with caplog.at_level(logging.WARNING, logger="diffusability"):
        assert _import_model(tmp_path, source, tmp_path / "old") == 0
    assert "records no latent_stats" in caplog.text and str(source / "stats.safetensors") in caplog.text


def test_the_dag_imports_instead_of_encoding_and_training(repo, snakemake_exe, workdir_factory, tmp_path):
    config = yaml.safe_load((repo / "config" / "smoke.yaml").read_text())
    config["repeats"] = 1  # an imported diffusion model is one checkpoint: the config refuses seed repeats
    config["tokenizers"]["baseline"]["latents"] = str(tmp_path)
    config["tokenizers"]["baseline"]["diffusion"] = {"sit-xs": str(tmp_path)}
    planned = planned_jobs(snakemake_exe, workdir_factory(config))
    n_tok = len(config["tokenizers"])
    assert planned["import_latents"] == 1 and planned["encode"] == n_tok - 1
    assert planned["train_diffusion"] == n_tok  # one of them imports (train-diffusion --import-from)
