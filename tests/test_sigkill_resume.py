"""A training command killed with SIGKILL resumes by itself when rerun, and ends with exactly the
weights of an uninterrupted run (CPU). Real processes, a real SIGKILL after the first checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusability.io import load_tensors, save_tensors

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "diffusability", *args]


def _kill_after_first_checkpoint(command: list[str], checkpoints: Path, done: Path, timeout: float = 240) -> None:
    """Start ``command``, SIGKILL it as soon as a checkpoint exists; fail if it finished first."""
    _kill_when(command, lambda: checkpoints.is_dir() and any(p.suffix == ".pt" for p in checkpoints.iterdir()),
               done, timeout)


def _kill_when(command: list[str], ready, done: Path, timeout: float = 240) -> None:
    """Start ``command``, SIGKILL it as soon as ``ready()`` holds; fail if it finished first."""
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if ready():
                process.send_signal(signal.SIGKILL)
                break
            if process.poll() is not None:
                pytest.fail(f"the run ended before it could be killed: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.02)
        else:
            pytest.fail("the kill point was not reached in time")
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not done.exists(), "the run finished before it was killed: make it longer"


def _run(command: list[str]) -> None:
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _assert_same_tensors(a: Path, b: Path) -> None:
    first, second = load_tensors(a), load_tensors(b)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_diffusion_training_survives_sigkill(tmp_path):
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (64,), generator=generator)
    latents = torch.randn(64, 2, 4, 4, generator=generator) + labels.float().reshape(-1, 1, 1, 1)
    save_tensors(tmp_path / "lat" / "train.safetensors", {"latents": latents, "labels": labels})
    save_tensors(tmp_path / "lat" / "stats.safetensors", {"mean": latents.mean((0, 2, 3)),
                                                          "std": latents.std((0, 2, 3))})
    spec = json.dumps({"name": "t", "family": "sit", "depth": 1, "width": 32, "heads": 2, "steps": 400,
                       "batch_size": 16, "lr": 1e-3, "ema_decay": 0.9, "checkpoint_every": 5, "num_classes": 3})
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(_command("train-diffusion", "--latents", str(tmp_path / "lat"), "--spec", spec, "--out", str(straight)))
    command = _command("train-diffusion", "--latents", str(tmp_path / "lat"), "--spec", spec, "--out", str(killed))
    _kill_after_first_checkpoint(command, killed / "checkpoints", killed / "ema.safetensors")
    _run(command)  # the rerun resumes from the checkpoint by itself
    _assert_same_tensors(straight / "ema.safetensors", killed / "ema.safetensors")


def test_tokenizer_training_survives_sigkill(tmp_path):
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, size=(32, 16, 16, 3), dtype=np.uint8))
    save_tensors(tmp_path / "train.safetensors", {"images": images, "labels": torch.zeros(32, dtype=torch.int64)},
                 metadata={"n_classes": "1", "image_size": "16"})
    spec = json.dumps({"name": "t", "seed": 0, "image_size": 16, "base_channels": 8, "channel_mult": [1, 2],
                       "latent_channels": 2, "steps": 300, "batch_size": 4, "checkpoint_every": 5,
                       "regularizer": {"name": "lmr"}})
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(_command("train-tokenizer", "--spec", spec, "--train", str(tmp_path / "train.safetensors"),
                  "--out", str(straight)))
    command = _command("train-tokenizer", "--spec", spec, "--train", str(tmp_path / "train.safetensors"),
                       "--out", str(killed))
    _kill_after_first_checkpoint(command, killed / "checkpoints", killed / "model.safetensors")
    _run(command)
    _assert_same_tensors(straight / "model.safetensors", killed / "model.safetensors")


def test_encode_survives_sigkill(tmp_path):
    """encode killed after its first progress record continues from there and writes the same latent files."""
    from diffusability.io import read_json

    rng = np.random.default_rng(1)
    for split, count in (("train", 3000), ("val", 64)):
        masks = np.zeros((count, 16, 16), dtype=bool)
        masks[:, 4:12, 4:12] = True
        save_tensors(tmp_path / f"{split}.safetensors",
                     {"images": rng.integers(0, 256, size=(count, 16, 16, 3), dtype=np.uint8),
                      "labels": np.zeros(count, dtype=np.int64), "masks": masks})
    tokenizer = {"name": "t", "seed": 0, "image_size": 16, "base_channels": 8, "channel_mult": [1, 2],
                 "latent_channels": 2, "steps": 1, "batch_size": 4}
    _run(_command("train-tokenizer", "--spec", json.dumps(tokenizer), "--train", str(tmp_path / "train.safetensors"),
                  "--out", str(tmp_path / "tok")))
    spec = json.dumps({"seed": 0, "batch_size": 16, "chunk": 32, "flip": True})

    def encode(out: Path) -> list[str]:
        return _command("encode", "--tokenizer", str(tmp_path / "tok"), "--train", str(tmp_path / "train.safetensors"),
                        "--val", str(tmp_path / "val.safetensors"), "--spec", spec, "--out", str(out))

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(encode(straight))
    progress = killed / "train.safetensors.progress.json"

    def first_chunk_recorded() -> bool:
        try:
            return progress.is_file() and read_json(progress)["done"]["latents"] > 0
        except Exception:  # noqa: BLE001 - a record being replaced at this instant: look again
            return False

    _kill_when(encode(killed), first_chunk_recorded, killed / "train.safetensors")
    assert (killed / "train.safetensors.partial").is_file()
    _run(encode(killed))
    for name in ("train", "val"):
        assert (killed / f"{name}.safetensors").read_bytes() == (straight / f"{name}.safetensors").read_bytes()
    _assert_same_tensors(straight / "stats.safetensors", killed / "stats.safetensors")
