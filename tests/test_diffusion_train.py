"""Diffusion training: spec validation, data order, resume equivalence, accumulation, NaN guard."""

import pandas as pd
import pytest
import torch

from diffusability.diffusion.spec import DiffusionSpec
from diffusability.diffusion.train import (global_batch_indices, init_model, load_diffusion_model, train_diffusion)
from diffusability.errors import DiffusabilityError
from diffusability.io import load_tensors

TINY = dict(depth=1, width=16, heads=2, steps=6, batch_size=8, lr=1e-3, ema_decay=0.9, checkpoint_every=2)


def toy_data(n=24, channels=2, grid=4, classes=3):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (n,), generator=g)
    latents = torch.randn(n, channels, grid, grid, generator=g) + labels.float().reshape(-1, 1, 1, 1)
    return latents, labels


def test_spec_family_defaults_and_unknown_keys():
    sit = DiffusionSpec.from_dict({})
    assert (sit.norm, sit.mlp, sit.time_sampling, sit.loss, sit.lr, sit.betas) == \
        ("layernorm", "gelu", "uniform", "mse", 1e-4, (0.9, 0.999))
    light = DiffusionSpec.from_dict({"family": "lightningdit", "lr": 5e-4})
    assert (light.pos_embed, light.norm, light.mlp, light.time_sampling, light.loss, light.lr, light.betas) == \
        ("rope+sincos", "rmsnorm", "swiglu", "logit_normal", "mse+cosine", 5e-4, (0.9, 0.95))
    with pytest.raises(DiffusabilityError, match="learning_rate"):
        DiffusionSpec.from_dict({"learning_rate": 1.0})
    with pytest.raises(DiffusabilityError, match="precision"):
        DiffusionSpec.from_dict({"precision": "fp8"})


def test_each_epoch_visits_every_latent_once():
    n, batch = 10, 4
    order = torch.cat([global_batch_indices(7, step, batch, n) for step in range(5)])  # 20 positions = 2 epochs
    for epoch in range(2):
        assert sorted(order[epoch * n:(epoch + 1) * n].tolist()) == list(range(n))
    assert not torch.equal(order[:n], order[n:])  # a new permutation per epoch


def test_init_depends_only_on_the_seed():
    a = init_model(dict(TINY, seed=3), 2, 4, 3)
    torch.manual_seed(123)  # the global RNG must not matter
    b = init_model(dict(TINY, seed=3), 2, 4, 3)
    c = init_model(dict(TINY, seed=4), 2, 4, 3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_resume_after_interruption_equals_a_straight_run(tmp_path):
    latents, labels = toy_data()
    train_diffusion(latents, labels, TINY, tmp_path / "straight", 3)
    train_diffusion(latents, labels, TINY, tmp_path / "resumed", 3, stop_after=3)
    assert not (tmp_path / "resumed" / "ema.safetensors").exists()
    train_diffusion(latents, labels, TINY, tmp_path / "resumed", 3)
    for name in ("ema", "model"):
        a = load_tensors(tmp_path / "straight" / f"{name}.safetensors")
        b = load_tensors(tmp_path / "resumed" / f"{name}.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)
    log_a = pd.read_parquet(tmp_path / "straight" / "train_log.parquet")
    log_b = pd.read_parquet(tmp_path / "resumed" / "train_log.parquet")
    assert log_a["step"].tolist() == list(range(6))
    pd.testing.assert_frame_equal(log_a.drop(columns="seconds"), log_b.drop(columns="seconds"))
    # the EMA moved away from the model (decay 0.9) and from the initialisation
    init = init_model(TINY, 2, 4, 3).state_dict()
    ema = load_tensors(tmp_path / "straight" / "ema.safetensors")
    assert any(not torch.equal(ema[k], init[k]) for k in ema)


def test_a_finished_run_of_other_latents_or_spec_is_never_returned(tmp_path):
    """Finding A: a finished checkpoint of other latents (or another lr) is set aside, not resumed."""
    latents, labels = toy_data()
    other = latents.flip(0).contiguous()
    train_diffusion(other, labels.flip(0), TINY, tmp_path / "other", 3)
    train_diffusion(latents, labels, dict(TINY, lr=5e-3), tmp_path / "lr", 3)
    train_diffusion(latents, labels, TINY, tmp_path / "run", 3)  # finished: its checkpoint stays
    train_diffusion(other, labels.flip(0), TINY, tmp_path / "run", 3)
    assert (tmp_path / "run" / "checkpoints.superseded").is_dir()
    a, b = load_tensors(tmp_path / "other" / "ema.safetensors"), load_tensors(tmp_path / "run" / "ema.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    train_diffusion(latents, labels, dict(TINY, lr=5e-3), tmp_path / "run", 3)
    a, b = load_tensors(tmp_path / "lr" / "ema.safetensors"), load_tensors(tmp_path / "run" / "ema.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_more_steps_continue_the_same_run(tmp_path):
    """steps is not part of the identity: raising it continues from the finished checkpoint."""
    latents, labels = toy_data()
    train_diffusion(latents, labels, TINY, tmp_path / "straight", 3)
    train_diffusion(latents, labels, dict(TINY, steps=4), tmp_path / "continued", 3)
    train_diffusion(latents, labels, TINY, tmp_path / "continued", 3)
    assert not (tmp_path / "continued" / "checkpoints.superseded").exists()
    a = load_tensors(tmp_path / "straight" / "ema.safetensors")
    b = load_tensors(tmp_path / "continued" / "ema.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    latents, labels = toy_data()
    spec = dict(TINY, steps=3, family="lightningdit")
    train_diffusion(latents, labels, spec, tmp_path / "full", 3)
    train_diffusion(latents, labels, dict(spec, micro_batch_size=2), tmp_path / "micro", 3)
    a = load_tensors(tmp_path / "full" / "model.safetensors")
    b = load_tensors(tmp_path / "micro" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    with pytest.raises(DiffusabilityError, match="micro_batch_size 3"):
        train_diffusion(latents, labels, dict(spec, micro_batch_size=3), tmp_path / "bad", 3)


def test_nan_guard_names_the_step(tmp_path):
    latents, labels = toy_data()
    with pytest.raises(DiffusabilityError, match=r"diffusion loss is (nan|inf) at step 0"):
        train_diffusion(latents * 1e30, labels, TINY, tmp_path, 3)  # squares overflow float32


def test_bad_training_data_is_named(tmp_path):
    latents, labels = toy_data()
    with pytest.raises(DiffusabilityError, match="labels must lie in"):
        train_diffusion(latents, labels, TINY, tmp_path, 2)
    bad = latents.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DiffusabilityError, match="NaN"):
        train_diffusion(bad, labels, TINY, tmp_path, 3)


def test_load_diffusion_model_returns_the_ema_in_eval_mode(tmp_path):
    latents, labels = toy_data()
    train_diffusion(latents, labels, dict(TINY, steps=2), tmp_path, 3)
    model = load_diffusion_model(tmp_path)
    assert not model.training
    ema = load_tensors(tmp_path / "ema.safetensors")
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    assert model.config.in_channels == 2 and model.config.num_classes == 3


def test_bf16_autocast_trains_and_keeps_fp32_weights(tmp_path):
    """precision bf16 (accelerate autocast; on the CPU too) trains, stays finite and saves float32 weights."""
    import subprocess
    import sys

    script = (
        "import torch, sys\n"
        "from diffusability.diffusion.train import train_diffusion\n"
        "from diffusability.io import load_tensors\n"
        "g = torch.Generator().manual_seed(0)\n"
        "labels = torch.randint(0, 3, (24,), generator=g)\n"
        "latents = torch.randn(24, 2, 4, 4, generator=g)\n"
        "spec = dict(depth=1, width=16, heads=2, steps=4, batch_size=8, lr=1e-3, ema_decay=0.9,\n"
        "            checkpoint_every=2, precision='bf16')\n"
        "train_diffusion(latents, labels, spec, sys.argv[1], 3)\n"
        "ema = load_tensors(sys.argv[1] + '/ema.safetensors')\n"
        "assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in ema.values())\n"
    )
    # a fresh process: accelerate's precision state is per process
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "bf16")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
