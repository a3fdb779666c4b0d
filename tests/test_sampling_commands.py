"""``train-diffusion`` and ``sample`` commands end to end on tiny generated latents and a fake decoder."""

import argparse
import hashlib
import json

import numpy as np
import pytest
import torch

from diffusability import tokenizers
from diffusability.diffusion import commands as diffusion_commands
from diffusability.errors import DiffusabilityError
from diffusability.io import load_arrays, load_tensors, save_tensors
from diffusability.sampling import commands as sampling_commands
from diffusability.sampling.noise import sample_labels, sample_noise

BACKBONE = dict(depth=1, width=16, heads=2, steps=3, batch_size=8, lr=1e-3, checkpoint_every=10, num_classes=3)


class FakeTokenizer:
    """decode: (N, C, 4, 4) latents → (N, 3, 8, 8) images in [-1, 1]: first channel tanh-upsampled."""

    def __init__(self):
        self.seen = []

    def decode(self, z):
        self.seen.append(z.clone())
        image = torch.tanh(z[:, :1]).repeat_interleave(2, 2).repeat_interleave(2, 3)
        return image.expand(-1, 3, -1, -1)


def run(argv):
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command", required=True)
    diffusion_commands.register(subparsers)
    sampling_commands.register(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture
def latent_dir(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (16,), generator=g)
    latents = 5 + 2 * torch.randn(16, 2, 4, 4, generator=g)
    directory = tmp_path / "latents"
    save_tensors(directory / "train.safetensors", {"latents": latents, "labels": labels})
    save_tensors(directory / "stats.safetensors", {"mean": latents.mean(dim=(0, 2, 3)),
                                                   "std": latents.std(dim=(0, 2, 3))})
    return directory


@pytest.fixture
def fake_tokenizer(monkeypatch):
    fake = FakeTokenizer()
    monkeypatch.setattr(tokenizers, "load_tokenizer", lambda directory: fake, raising=False)
    return fake


def test_train_then_sample_writes_adm_npz_and_trajectories(tmp_path, latent_dir, fake_tokenizer):
    model_dir = tmp_path / "model"
    run(["train-diffusion", "--latents", str(latent_dir), "--spec", json.dumps(BACKBONE), "--out", str(model_dir)])
    assert (model_dir / "ema.safetensors").is_file() and (model_dir / "train_log.parquet").is_file()
    spec = {"seed": 4, "num_samples": 5, "num_steps": 3, "batch_size": 2, "trajectories": 2}
    out = tmp_path / "samples.npz"
    traj = tmp_path / "traj.safetensors"
    run(["sample", "--diffusion", str(model_dir), "--tokenizer", "tok", "--latents", str(latent_dir),
         "--spec", json.dumps(spec), "--cfg-scale", "1.5", "--out", str(out), "--trajectories", str(traj)])
    arrays = load_arrays(out)
    assert arrays["arr_0"].dtype == np.uint8 and arrays["arr_0"].shape == (5, 8, 8, 3)
    assert arrays["labels"].tolist() == sample_labels(4, range(5), 3).tolist()
    settings = json.loads(str(arrays["sampler"][0]))
    assert settings["cfg_scale"] == 1.5 and settings["num_steps"] == 3 and settings["guidance_channels"] == "all"
    # the decoder saw de-normalised latents (data mean ≈ 5), not the normalised ones
    decoded = torch.cat(fake_tokenizer.seen)
    assert decoded.shape == (5, 2, 4, 4) and float(decoded.mean()) > 2
    trajectories = load_tensors(traj)
    assert trajectories["trajectory"].shape == (4, 2, 2, 4, 4)
    assert trajectories["index"].tolist() == [0, 1]
    assert trajectories["times"].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 1])


def test_untrained_baseline_from_the_spec_alone(tmp_path, latent_dir, fake_tokenizer):
    spec = {"num_samples": 3, "num_steps": 2, "batch_size": 3, "trajectories": 0, "backbone": BACKBONE}
    out = tmp_path / "untrained.npz"
    run(["sample", "--untrained", "--tokenizer", "tok", "--latents", str(latent_dir), "--spec", json.dumps(spec),
         "--cfg-scale", "1.0", "--out", str(out)])
    arrays = load_arrays(out)
    assert arrays["arr_0"].shape == (3, 8, 8, 3)
    assert json.loads(str(arrays["sampler"][0]))["which"] == "untrained"
    # zero-initialised output layer: the untrained velocity is 0, so the decoder gets noise·std + mean
    stats = load_tensors(latent_dir / "stats.safetensors")
    expected = sample_noise(0, range(3), (2, 4, 4)) * stats["std"].reshape(1, -1, 1, 1) + stats["mean"].reshape(1, -1, 1, 1)
    assert torch.allclose(fake_tokenizer.seen[0], expected, atol=1e-5)


def test_bad_specs_are_named(tmp_path, latent_dir, fake_tokenizer):
    with pytest.raises(DiffusabilityError, match="num_classes is required"):
        run(["train-diffusion", "--latents", str(latent_dir), "--spec", json.dumps({"steps": 1}),
             "--out", str(tmp_path / "m")])
    with pytest.raises(DiffusabilityError, match="num_sample"):
        run(["sample", "--untrained", "--tokenizer", "t", "--latents", str(latent_dir),
             "--spec", json.dumps({"num_sample": 3, "backbone": BACKBONE}), "--cfg-scale", "1", "--out", "x.npz"])
    with pytest.raises(DiffusabilityError, match="'backbone'"):
        run(["sample", "--untrained", "--tokenizer", "t", "--latents", str(latent_dir), "--spec", "{}",
             "--cfg-scale", "1", "--out", str(tmp_path / "x.npz")])


def _folder_sha256(folder) -> str:
    """Closed form of a folder input's hash (docs/architecture.md §7.3, §7.4): one "path NUL sha256 LF" line per
    file, sorted, training by-products left out."""
    import hashlib

    files = sorted(p.relative_to(folder) for p in folder.rglob("*")
                   if p.is_file() and "checkpoints" not in p.relative_to(folder).parts and p.name != "train_log.parquet")
    lines = "".join(f"{rel.as_posix()}\0{hashlib.sha256((folder / rel).read_bytes()).hexdigest()}\n" for rel in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def test_weights_samples_and_trajectories_carry_their_provenance(tmp_path, latent_dir, fake_tokenizer):
    """Through the CLI: the diffusion weights record their latent folder's hash and the statistics they were
    trained with; the samples and trajectories record the model's and the latents' hashes, not the output
    that a killed run left at --trajectories."""
    from diffusability.cli import main
    from diffusability.devices import describe_device
    from diffusability.io import read_provenance

    device = describe_device("cuda") if torch.cuda.is_available() else "cpu"
    model_dir = tmp_path / "model"
    assert main(["train-diffusion", "--latents", str(latent_dir), "--spec", json.dumps(BACKBONE),
                 "--out", str(model_dir)]) == 0
    weights = read_provenance(model_dir / "ema.safetensors")
    assert weights["inputs"] == {"latents": _folder_sha256(latent_dir)} and weights["device"] == device
    assert weights["command"] == "train-diffusion"
    stats = load_tensors(latent_dir / "stats.safetensors")
    recorded = json.loads((model_dir / "config.json").read_text())["latent_stats"]
    assert recorded == {"mean": stats["mean"].tolist(), "std": stats["std"].tolist()}

    out, traj = tmp_path / "samples.npz", tmp_path / "traj.safetensors"
    traj.write_bytes(b"left behind by a killed run")
    spec = {"seed": 4, "num_samples": 3, "num_steps": 2, "batch_size": 3, "trajectories": 1}
    assert main(["sample", "--diffusion", str(model_dir), "--tokenizer", "tok", "--latents", str(latent_dir),
                 "--spec", json.dumps(spec), "--cfg-scale", "1.5", "--out", str(out), "--trajectories", str(traj)]) == 0
    samples = read_provenance(out)
    # sample reads only the latents' statistics: that file is its input, not the whole folder (the train
    # latents of an ImageNet study would be hashed once per sampling job)
    stats_sha256 = hashlib.sha256((latent_dir / "stats.safetensors").read_bytes()).hexdigest()
    assert samples["inputs"] == {"diffusion": _folder_sha256(model_dir), "latents/stats.safetensors": stats_sha256}
    assert samples["command"] == "sample" and samples["device"] == device
    assert read_provenance(traj) == samples
