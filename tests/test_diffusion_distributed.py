"""Two CPU processes (gloo) train the same weights as one at the same global batch."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from diffusability.diffusion.train import init_model, train_diffusion
from diffusability.io import load_tensors

SPEC = dict(depth=1, width=16, heads=2, steps=3, batch_size=8, lr=1e-3, ema_decay=0.9, checkpoint_every=10,
            family="lightningdit")

SCRIPT = textwrap.dedent("""
    import sys, torch
    from accelerate import PartialState
    from diffusability.diffusion.train import train_diffusion
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (24,), generator=g)
    latents = torch.randn(24, 2, 4, 4, generator=g) + labels.float().reshape(-1, 1, 1, 1)
    train_diffusion(latents, labels, {spec!r}, sys.argv[1], 3)
    # without ACCELERATE_USE_CPU these would be two independent world-size-1 runs (a vacuous pass)
    assert PartialState().num_processes == 2, PartialState().num_processes
""")


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(spec=SPEC))
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    result = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(script),
                             str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (24,), generator=g)
    latents = torch.randn(24, 2, 4, 4, generator=g) + labels.float().reshape(-1, 1, 1, 1)
    train_diffusion(latents, labels, SPEC, tmp_path / "one", 3)
    for name in ("model", "ema"):
        one = load_tensors(tmp_path / "one" / f"{name}.safetensors")
        two = load_tensors(tmp_path / "two" / f"{name}.safetensors")
        assert all(torch.allclose(one[k], two[k], atol=1e-5) for k in one), name
    # the weights moved, so the comparison is not between two initialisations
    init = init_model(SPEC, 2, 4, 3).state_dict()
    trained = load_tensors(tmp_path / "one" / "model.safetensors")
    assert any(not torch.allclose(trained[k], init[k]) for k in trained)
