"""Global batch over processes and micro-batches: the layout, gradient accumulation, and two gloo
processes (accelerate launch and torchrun) against one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusability.errors import DiffusabilityError
from diffusability.imaging import to_model_input
from diffusability.seeding import torch_generator
from diffusability.tokenizers import TokenizerSpec, load_tokenizer, train_tokenizer
from diffusability.tokenizers.distributed import BatchLayout
from diffusability.tokenizers.factory import initial_tokenizer
from diffusability.tokenizers.train import TokenizerTrainer

# 64 channels in 32 GroupNorm groups: with one channel per group (narrower nets), a conv bias in
# front of a norm has an exactly-zero gradient, and Adam turns its round-off into ±lr steps whose
# sign differs between summation orders; with two channels per group every gradient is real.
TINY = dict(image_size=16, base_channels=64, channel_mult=[1, 1], num_res_blocks=1, latent_channels=3,
            batch_size=4, steps=4, checkpoint_every=2, lr=1e-3)
CLOSE = dict(rtol=1e-4, atol=5e-5)  # float32 round-off of different summation orders, through 4 Adam steps
# the GAN from step 1 (its adaptive weight at the decoder's last conv, BatchNorm in the discriminator)
# and lmr (mask draws per micro-batch, a mask token that some micro-batches leave unused)
GAN_LMR = {**TINY, "micro_batch_size": 1, "disc_weight": 0.5, "disc_start": 1, "disc_layers": 1,
           "disc_channels": 8, "regularizer": {"name": "lmr", "mask_probabilities": [0.3, 0.3, 0.3]}}


@settings(max_examples=50, deadline=None)
@given(world=st.integers(1, 4), micro=st.integers(1, 4), per_process_micro=st.integers(1, 3))
def test_layouts_cover_the_global_batch_once_with_scales_that_sum_to_one(world, micro, per_process_micro):
    global_batch = world * micro * per_process_micro
    seen, scale_total = [], 0.0
    for rank in range(world):
        layout = BatchLayout(global_batch, micro, world, rank)
        for _, part in layout.my_micro_batches():
            seen += list(range(global_batch))[part]
            # each micro-batch mean is scaled, then the processes' gradients are averaged (÷ world)
            scale_total += layout.loss_scale / world
    assert sorted(seen) == list(range(global_batch))
    assert scale_total == pytest.approx(1.0)


def test_layouts_that_cannot_meet_the_batch_are_errors():
    with pytest.raises(DiffusabilityError, match="not divisible"):
        BatchLayout(6, 1, world_size=4)
    with pytest.raises(DiffusabilityError, match="micro_batch_size 3"):
        BatchLayout(8, 3, world_size=2)


def _images(n=8, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _weights(directory):
    return {k: v.clone() for k, v in load_tokenizer(directory).state_dict().items()}


def _first_step_gradients(spec: dict, batch: np.ndarray, micro: int) -> dict[str, torch.Tensor]:
    """The generator gradients the trainer hands to Adam in its first step, by parameter name."""
    trainer = TokenizerTrainer(TokenizerSpec.from_dict({**spec, "micro_batch_size": micro}))
    names = {id(p): f"model.{n}" for n, p in trainer.model.named_parameters()}
    names[id(trainer.objective.logvar)] = "logvar"
    captured = {}

    def capture(optimizer, args, kwargs):
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                captured[names[id(parameter)]] = parameter.grad.clone()

    trainer.optimizer.optimizer.register_step_pre_hook(capture)
    trainer.train_step(torch.as_tensor(batch), BatchLayout(batch.shape[0], micro))
    return captured


def _hand_computed_gradients(spec: dict, batch: np.ndarray) -> dict[str, torch.Tensor]:
    """Brute force: ∇ of the global-batch mean of Σ|x − x̂| + kl_weight·KL (logvar 0, no perceptual
    term without a teacher), with the trainer's first-step noise, in one plain autograd pass."""
    spec = TokenizerSpec.from_dict(spec)
    model = initial_tokenizer(spec).train()
    logvar = torch.zeros((), requires_grad=True)
    x = to_model_input(batch)
    moments = model.quant_conv(model.encoder(x))
    mean, log_variance = moments.chunk(2, dim=1)
    log_variance = log_variance.clamp(-30.0, 20.0)
    noise = torch.randn(mean.shape, generator=torch_generator(spec.seed, "tokenizer-train"))
    reconstruction = model.decode(mean + torch.exp(0.5 * log_variance) * noise)
    nll = ((x - reconstruction).abs() / torch.exp(logvar) + logvar).sum() / x.shape[0]
    kl = 0.5 * (mean.pow(2) + log_variance.exp() - 1.0 - log_variance).sum() / x.shape[0]
    (nll + spec.kl_weight * kl).backward()
    grads = {f"model.{n}": p.grad for n, p in model.named_parameters()}
    grads["logvar"] = logvar.grad
    return grads


@pytest.mark.parametrize("micro", [4, 2, 1])
def test_accumulated_gradient_is_the_gradient_of_the_global_batch_mean(micro):
    batch = _images(4)
    expected = _hand_computed_gradients(TINY, batch)
    got = _first_step_gradients(TINY, batch, micro)
    assert got.keys() == expected.keys()
    for name, gradient in expected.items():
        # float32 summation-order round-off only, relative to the tensor's own scale
        scale = float(gradient.abs().max())
        torch.testing.assert_close(got[name], gradient, rtol=1e-5, atol=1e-5 * scale, msg=name)


def test_accumulating_micro_batches_gives_the_weights_of_the_whole_batch(tmp_path):
    images = _images()
    train_tokenizer(images, None, TINY, tmp_path / "whole")
    train_tokenizer(images, None, {**TINY, "micro_batch_size": 1}, tmp_path / "micro")
    whole, micro = _weights(tmp_path / "whole"), _weights(tmp_path / "micro")
    for key in whole:
        torch.testing.assert_close(micro[key], whole[key], **CLOSE, msg=key)
    assert not all(torch.equal(micro[k], whole[k]) for k in whole)  # computed differently, not copied


def test_accumulating_run_resumes_exactly(tmp_path):
    spec = {**GAN_LMR, "micro_batch_size": 2}
    images = _images()
    train_tokenizer(images, None, spec, tmp_path / "straight")
    assert train_tokenizer(images, None, spec, tmp_path / "resumed", stop_after=2) is None
    train_tokenizer(images, None, spec, tmp_path / "resumed")
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_processes_that_accelerate_cannot_see_are_an_error(tmp_path, monkeypatch):
    # a launcher started 2 processes, but accelerate did not join them (no ACCELERATE_USE_CPU on a CPU):
    # each would train alone on the whole batch
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DiffusabilityError, match="ACCELERATE_USE_CPU"):
        train_tokenizer(_images(), None, TINY, tmp_path)


WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from accelerate import PartialState
    from diffusability.tokenizers import TokenizerSpec, train_tokenizer
    from diffusability.tokenizers.train import TokenizerTrainer
    specs, out = json.loads(sys.argv[1]), sys.argv[2]
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    for name, spec in specs.items():
        train_tokenizer(images, None, spec, f"{out}/{name}")
    state = PartialState()
    trainer = TokenizerTrainer(TokenizerSpec.from_dict(specs["gan_lmr"]))
    # one file per process (their stdout lines may interleave)
    with open(f"{out}/process{state.process_index}.json", "w") as report:
        json.dump({"world": state.num_processes, "generator": type(trainer.train_generator).__name__,
                   "discriminator": type(trainer.train_discriminator).__name__}, report)
""")

LAUNCHERS = {
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no"],
    # what the workflow's `launcher` (workflow/rules/common.smk) runs for a job with gpu > 1
    "torchrun": ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_gloo_processes_give_the_weights_of_one_process_at_the_same_global_batch(tmp_path, launcher):
    # plain: the default micro-batch (each process's share) against one process's whole batch;
    # gan_lmr: one image per micro-batch on both sides, since the GAN's adaptive weight, the
    # discriminator's BatchNorm and lmr's mask draws belong to a micro-batch
    specs = {"plain": TINY, "gan_lmr": GAN_LMR}
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, *LAUNCHERS[launcher], str(script), json.dumps(specs),
                             str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # one job of two ranks, not two world-size-1 runs; gradients averaged by DDP itself, for the
    # generator side and for the discriminator
    for rank in range(2):
        report = json.loads((tmp_path / "two" / f"process{rank}.json").read_text())
        assert report == {"world": 2, "generator": "DistributedDataParallel",
                          "discriminator": "DistributedDataParallel"}, report
    images = _images()
    for name, spec in specs.items():
        train_tokenizer(images, None, spec, tmp_path / "one" / name)
        one, two = _weights(tmp_path / "one" / name), _weights(tmp_path / "two" / name)
        initial = initial_tokenizer(spec).state_dict()
        assert any(not torch.allclose(one[k], initial[k]) for k in one)  # trained, not two initialisations
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-5, msg=f"{name}: {key}")
