"""Sharded sampling: fixed index blocks dealt round-robin; 1 and 2 processes write byte-identical images."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusability.diffusion.train import train_diffusion
from diffusability.errors import DiffusabilityError
from diffusability.io import load_arrays, load_tensors, save_tensors
from diffusability.sampling.sharding import blocks_of_rank, index_blocks, shard_path


@given(n=st.integers(0, 60), batch=st.integers(1, 9), world=st.integers(1, 5))
@settings(max_examples=60, deadline=None)
def test_blocks_cover_every_index_once_and_do_not_depend_on_the_world(n, batch, world):
    blocks = index_blocks(n, batch)
    # the blocks themselves are a function of (n, batch) only: [b·B, min((b+1)·B, n))
    assert [list(b) for b in blocks] == [list(range(s, min(s + batch, n))) for s in range(0, n, batch)]
    dealt = [b for rank in range(world) for b in blocks_of_rank(len(blocks), rank, world)]
    assert sorted(dealt) == list(range(len(blocks)))  # each block exactly once
    for rank in range(world):
        assert all(b % world == rank for b in blocks_of_rank(len(blocks), rank, world))  # round-robin


def test_bad_block_arguments_are_named():
    with pytest.raises(DiffusabilityError, match="batch_size"):
        index_blocks(10, 0)
    with pytest.raises(DiffusabilityError, match="rank"):
        blocks_of_rank(4, 2, 2)


SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    from diffusability import cli, tokenizers
    from diffusability.sampling import generate

    class FakeTokenizer:
        # (N, C, 4, 4) → (N, 3, 8, 8) in [-1, 1]; rounding to uint8 makes byte equality a sharp test
        def decode(self, z):
            image = torch.tanh(z[:, :1] - z[:, 1:2]).repeat_interleave(2, 2).repeat_interleave(2, 3)
            return torch.cat([image, torch.sin(image), -image], dim=1)

    tokenizers.load_tokenizer = lambda directory: FakeTokenizer()
    seen = []
    original = generate.sample_batch

    def spy(model, seed, indices, *args, **kwargs):
        seen.append([int(i) for i in indices])
        return original(model, seed, indices, *args, **kwargs)

    generate.sample_batch = spy
    code = cli.main(sys.argv[2:])
    rank = os.environ.get("RANK", "0")
    with open(f"{sys.argv[1]}.rank{rank}-of-{os.environ.get('WORLD_SIZE', '1')}.json", "w") as handle:
        json.dump(seen, handle)
    sys.exit(code)
""")


@pytest.mark.slow
def test_one_and_two_processes_write_identical_bytes(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (16,), generator=g)
    latents = torch.randn(16, 2, 4, 4, generator=g) + labels.float().reshape(-1, 1, 1, 1)
    latent_dir = tmp_path / "latents"
    save_tensors(latent_dir / "train.safetensors", {"latents": latents, "labels": labels})
    save_tensors(latent_dir / "stats.safetensors", {"mean": latents.mean(dim=(0, 2, 3)),
                                                   "std": latents.std(dim=(0, 2, 3))})
    # a few steps of training so the velocity is not the zero of the zero-initialised output layer
    spec = dict(depth=1, width=16, heads=2, steps=4, batch_size=8, lr=3e-3, ema_decay=0.0, checkpoint_every=10)
    train_diffusion((latents - latents.mean()) / latents.std(), labels, spec, tmp_path / "model", 3)

    script = tmp_path / "sample.py"
    script.write_text(SCRIPT)
    sampling = json.dumps({"seed": 3, "num_samples": 7, "num_steps": 4, "batch_size": 2, "trajectories": 3,
                           "device": "cpu"})
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def sample(tag, launcher):
        out = tmp_path / tag
        argv = [str(script), str(out), "sample", "--diffusion", str(tmp_path / "model"), "--tokenizer", "fake",
                "--latents", str(latent_dir), "--spec", sampling, "--cfg-scale", "2.0",
                "--out", f"{out}.npz", "--trajectories", f"{out}.traj.safetensors"]
        result = subprocess.run([*launcher, *argv], env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return load_arrays(f"{out}.npz"), load_tensors(f"{out}.traj.safetensors")

    one, one_traj = sample("one", [sys.executable])
    two, two_traj = sample("two", [str(torchrun), "--standalone", "--nproc_per_node", "2"])

    # the work really was split: rank 0 took blocks 0 and 2, rank 1 blocks 1 and 3 (the partial one)
    assert json.loads((tmp_path / "two.rank0-of-2.json").read_text()) == [[0, 1], [4, 5]]
    assert json.loads((tmp_path / "two.rank1-of-2.json").read_text()) == [[2, 3], [6]]
    assert json.loads((tmp_path / "one.rank0-of-1.json").read_text()) == [[0, 1], [2, 3], [4, 5], [6]]

    assert one["arr_0"].shape == (7, 8, 8, 3) and one["arr_0"].dtype == np.uint8
    assert one["arr_0"].tobytes() == two["arr_0"].tobytes()
    assert np.array_equal(one["labels"], two["labels"])
    assert len({one["arr_0"][i].tobytes() for i in range(7)}) == 7  # not a constant image
    for key in ("trajectory", "index", "labels", "times"):
        assert torch.equal(one_traj[key], two_traj[key]), key
    assert one_traj["index"].tolist() == [0, 1, 2]
    assert one_traj["labels"].tolist() == one["labels"][:3].tolist()
    # the shard files were merged and removed
    assert not shard_path(tmp_path / "two.npz", 0, 2).exists() and not shard_path(tmp_path / "two.npz", 1, 2).exists()
