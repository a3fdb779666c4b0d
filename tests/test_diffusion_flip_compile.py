"""Diffusion training options: the flip-augmented latent cache (flip_augment) and torch.compile (compile)."""

import argparse
import json
import logging

import pytest
import torch

from diffusability.diffusion import commands as diffusion_commands
from diffusability.diffusion import train as train_module
from diffusability.latents import normalised
from diffusability.latents.normalised import load_normalised_latents
from diffusability.diffusion.spec import DiffusionSpec
from diffusability.diffusion.train import flip_choices, global_batch_indices, train_diffusion
from diffusability.errors import DiffusabilityError
from diffusability.io import load_tensors, save_tensors

TINY = dict(depth=1, width=16, heads=2, steps=4, batch_size=8, lr=1e-3, ema_decay=0.9, checkpoint_every=2)


def toy_data(n=24):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (n,), generator=g)
    latents = torch.randn(n, 2, 4, 4, generator=g) + labels.float().reshape(-1, 1, 1, 1)
    return latents, labels, latents.flip(-1) + 10.0  # "flipped" copies, shifted so a mix-up is visible


def weights(directory, name="model"):
    return load_tensors(directory / f"{name}.safetensors")


def test_flip_choices_are_a_fair_deterministic_stream():
    assert torch.equal(flip_choices(0, 5, 64), flip_choices(0, 5, 64))
    assert not torch.equal(flip_choices(0, 5, 64), flip_choices(0, 6, 64))
    assert not torch.equal(flip_choices(0, 5, 64), flip_choices(1, 5, 64))
    share = torch.stack([flip_choices(0, step, 100) for step in range(100)]).float().mean()
    assert abs(float(share) - 0.5) < 0.02  # 10 000 Bernoulli(0.5) draws: sd 0.005


def test_each_draw_takes_the_copy_the_stream_names(tmp_path, monkeypatch):
    """Brute force: the x1 the loss sees equals latents or latents_flip per (indices, flip_choices)."""
    latents, labels, flipped = toy_data()
    seen = []
    original = train_module.flow_matching_loss

    def spy(model, x1, y, **kwargs):
        seen.append(x1.clone())
        return original(model, x1, y, **kwargs)

    monkeypatch.setattr(train_module, "flow_matching_loss", spy)
    spec = dict(TINY, flip_augment=True, seed=5)
    train_diffusion(latents, labels, spec, tmp_path / "m", 3, latents_flip=flipped)
    assert len(seen) == TINY["steps"]
    for step, x1 in enumerate(seen):
        indices = global_batch_indices(5, step, 8, 24)
        choose = flip_choices(5, step, 8)
        expected = torch.stack([flipped[i] if c else latents[i] for i, c in zip(indices.tolist(), choose.tolist())])
        assert torch.equal(x1, expected)
    assert 0 < sum(int(flip_choices(5, s, 8).sum()) for s in range(4)) < 32  # both copies were used


def test_identical_copies_train_exactly_like_no_augmentation(tmp_path):
    """With latents_flip == latents the choice is moot: the flip stream must not shift any other draw."""
    latents, labels, _ = toy_data()
    train_diffusion(latents, labels, TINY, tmp_path / "plain", 3)
    train_diffusion(latents, labels, dict(TINY, flip_augment=True), tmp_path / "flip", 3, latents_flip=latents.clone())
    plain, flip = weights(tmp_path / "plain"), weights(tmp_path / "flip")
    assert all(torch.equal(plain[k], flip[k]) for k in plain)


def test_flip_augmented_resume_equals_a_straight_run(tmp_path):
    latents, labels, flipped = toy_data()
    spec = dict(TINY, flip_augment=True)
    train_diffusion(latents, labels, spec, tmp_path / "straight", 3, latents_flip=flipped)
    train_diffusion(latents, labels, spec, tmp_path / "resumed", 3, latents_flip=flipped, stop_after=2)
    train_diffusion(latents, labels, spec, tmp_path / "resumed", 3, latents_flip=flipped)
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    # and the augmentation changed the result (the flipped copies differ from the originals)
    train_diffusion(latents, labels, TINY, tmp_path / "plain", 3)
    plain = weights(tmp_path / "plain")
    assert not all(torch.equal(plain[k], straight[k]) for k in plain)


def test_a_checkpoint_written_without_flips_is_set_aside(tmp_path):
    """Switching flip_augment on does not resume the run without flips: it trains from scratch."""
    latents, labels, flipped = toy_data()
    train_diffusion(latents, labels, dict(TINY, flip_augment=True), tmp_path / "straight", 3, latents_flip=flipped)
    train_diffusion(latents, labels, TINY, tmp_path / "m", 3, stop_after=2)
    train_diffusion(latents, labels, dict(TINY, flip_augment=True), tmp_path / "m", 3, latents_flip=flipped)
    assert (tmp_path / "m" / "checkpoints.superseded").is_dir()
    a, b = load_tensors(tmp_path / "straight" / "ema.safetensors"), load_tensors(tmp_path / "m" / "ema.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_flip_augment_without_flipped_latents_is_an_error(tmp_path):
    latents, labels, flipped = toy_data()
    with pytest.raises(DiffusabilityError, match="latents_flip"):
        train_diffusion(latents, labels, dict(TINY, flip_augment=True), tmp_path / "m", 3)
    with pytest.raises(DiffusabilityError, match="latents_flip"):
        train_diffusion(latents, labels, dict(TINY, flip_augment=True), tmp_path / "m", 3, latents_flip=flipped[:5])
    with pytest.raises(DiffusabilityError, match="flip_augment"):
        DiffusionSpec.from_dict({"flip_augment": "yes"})


def run(argv):
    parser = argparse.ArgumentParser()
    diffusion_commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_command_names_the_missing_tensor_and_normalises_the_copies(tmp_path):
    latents, labels, flipped = toy_data()
    stats = {"mean": torch.tensor([1.0, -2.0]), "std": torch.tensor([2.0, 0.5])}
    plain_dir, flip_dir = tmp_path / "plain", tmp_path / "flip"
    save_tensors(plain_dir / "train.safetensors", {"latents": latents, "labels": labels})
    save_tensors(plain_dir / "stats.safetensors", stats)
    save_tensors(flip_dir / "train.safetensors", {"latents": latents, "labels": labels, "latents_flip": flipped})
    save_tensors(flip_dir / "stats.safetensors", stats)
    spec = json.dumps(dict(TINY, steps=1, num_classes=3, flip_augment=True))
    with pytest.raises(DiffusabilityError, match=r"train\.safetensors.*'latents_flip'"):
        run(["train-diffusion", "--latents", str(plain_dir), "--spec", spec, "--out", str(tmp_path / "m")])
    _, _, extra = load_normalised_latents(flip_dir, flipped=True)
    expected = (flipped - stats["mean"].reshape(1, 2, 1, 1)) / stats["std"].reshape(1, 2, 1, 1)
    assert torch.allclose(extra["latents_flip"], expected)
    run(["train-diffusion", "--latents", str(flip_dir), "--spec", spec, "--out", str(tmp_path / "m")])
    assert (tmp_path / "m" / "ema.safetensors").is_file()


def _compile_works() -> str | None:
    """None when torch.compile runs here, else the reason it does not."""
    try:
        compiled = torch.compile(lambda x: x * 2.0 + 1.0)
        return None if bool((compiled(torch.ones(2)) == 3.0).all()) else "torch.compile gave a wrong value"
    except Exception as exc:  # noqa: BLE001
        return f"torch.compile does not work here: {type(exc).__name__}: {str(exc)[:200]}"


def test_compile_off_and_unsupported_fall_back(monkeypatch, caplog):
    model = torch.nn.Linear(2, 2)
    assert train_module.compile_for_training(model, False) is model

    def broken(*args, **kwargs):
        raise RuntimeError("no backend")

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.WARNING, logger="diffusability"):
        assert train_module.compile_for_training(model, True) is model
    assert "training eagerly" in caplog.text


@pytest.mark.slow
def test_compiled_training_runs_two_steps_like_eager(tmp_path, caplog):
    reason = _compile_works()
    if reason:
        pytest.skip(reason)
    latents, labels, _ = toy_data()
    spec = dict(TINY, steps=2)
    with caplog.at_level(logging.WARNING, logger="diffusability"):
        train_diffusion(latents, labels, dict(spec, compile=True), tmp_path / "compiled", 3)
    assert "training eagerly" not in caplog.text  # it really ran compiled
    train_diffusion(latents, labels, spec, tmp_path / "eager", 3)
    compiled, eager = weights(tmp_path / "compiled"), weights(tmp_path / "eager")
    assert set(compiled) == set(eager)  # no "_orig_mod." prefixes in the saved weights
    assert all(torch.allclose(compiled[k], eager[k], atol=1e-5) for k in eager)


def test_memory_mapped_latents_train_exactly_like_latents_in_memory(tmp_path):
    """train-diffusion reads the latent file through a memory map and normalises each batch; the weights
    equal (bit for bit) those of training on the whole normalised tensor in memory."""
    from diffusability.io import memory_map_tensors

    latents, labels, flipped = toy_data()
    stats = {"mean": torch.tensor([1.0, -2.0]), "std": torch.tensor([2.0, 0.5])}
    save_tensors(tmp_path / "lat" / "train.safetensors", {"latents": latents, "labels": labels, "latents_flip": flipped})
    save_tensors(tmp_path / "lat" / "stats.safetensors", stats)
    mapped = memory_map_tensors(tmp_path / "lat" / "train.safetensors", ["latents", "labels"])
    assert torch.equal(mapped["latents"], latents) and torch.equal(mapped["labels"], labels)
    with pytest.raises(DiffusabilityError, match="no tensor 'absent'"):
        memory_map_tensors(tmp_path / "lat" / "train.safetensors", ["absent"])

    lazy, lazy_labels, extra = load_normalised_latents(tmp_path / "lat", flipped=True, lazy=True)
    eager, _, eager_extra = load_normalised_latents(tmp_path / "lat", flipped=True)
    assert isinstance(lazy, normalised.NormalisedLatents) and lazy.shape == tuple(eager.shape)
    assert torch.equal(lazy[:], eager) and torch.equal(extra["latents_flip"][[3, 0, 3]], eager_extra["latents_flip"][[3, 0, 3]])

    spec = dict(TINY, flip_augment=True)
    train_diffusion(lazy, lazy_labels, spec, tmp_path / "lazy", 3, latents_flip=extra["latents_flip"])
    train_diffusion(eager, labels, spec, tmp_path / "eager", 3, latents_flip=eager_extra["latents_flip"])
    for name in ("model", "ema"):
        a, b = weights(tmp_path / "lazy", name), weights(tmp_path / "eager", name)
        assert all(torch.equal(a[k], b[k]) for k in a)
