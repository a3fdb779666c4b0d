"""Global batch over processes and micro-batches: the layout, accumulation, and two gloo processes."""

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
from diffusability.tokenizers import load_tokenizer, train_tokenizer
from diffusability.tokenizers.distributed import BatchLayout

# 64 channels in 32 GroupNorm groups: with one channel per group (narrower nets), a conv bias in
# front of a norm has an exactly-zero gradient, and Adam turns its round-off into ±lr steps whose
# sign differs between summation orders; with two channels per group every gradient is real.
TINY = dict(image_size=16, base_channels=64, channel_mult=[1, 1], num_res_blocks=1, latent_channels=3,
            batch_size=4, steps=4, checkpoint_every=2, lr=1e-3)
CLOSE = dict(rtol=1e-4, atol=5e-5)  # float32 round-off of different summation orders, through 4 Adam steps


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


def test_accumulating_micro_batches_gives_the_weights_of_the_whole_batch(tmp_path):
    images = _images()
    train_tokenizer(images, None, TINY, tmp_path / "whole")
    train_tokenizer(images, None, {**TINY, "micro_batch_size": 1}, tmp_path / "micro")
    whole, micro = _weights(tmp_path / "whole"), _weights(tmp_path / "micro")
    for key in whole:
        torch.testing.assert_close(micro[key], whole[key], **CLOSE, msg=key)
    assert not all(torch.equal(micro[k], whole[k]) for k in whole)  # computed differently, not copied


def test_accumulating_run_resumes_exactly(tmp_path):
    spec = {**TINY, "micro_batch_size": 2, "regularizer": {"name": "lmr", "mask_probabilities": [0.3, 0.3, 0.3]}}
    images = _images()
    train_tokenizer(images, None, spec, tmp_path / "straight")
    assert train_tokenizer(images, None, spec, tmp_path / "resumed", stop_after=2) is None
    train_tokenizer(images, None, spec, tmp_path / "resumed")
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from diffusability.tokenizers import train_tokenizer
    from diffusability.tokenizers.distributed import ProcessGroup
    group = ProcessGroup()
    print(f"process {group.rank} of {group.world_size}", flush=True)
    specs, out = json.loads(sys.argv[1]), sys.argv[2]
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    for name, spec in specs.items():
        train_tokenizer(images, None, spec, f"{out}/{name}")
""")


@pytest.mark.slow
def test_two_gloo_processes_give_the_weights_of_one_process_at_the_same_global_batch(tmp_path):
    lmr = {**TINY, "regularizer": {"name": "lmr", "mask_probabilities": [0.3, 0.3, 0.3]}}
    specs = {"plain": TINY, "lmr": lmr}
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), json.dumps(specs), str(tmp_path / "two")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "process 1 of 2" in result.stdout  # one job of two ranks, not two world-size-1 runs
    images = _images()
    # one process: the whole batch at once (no regularizer draws), and 2 micro-batches of 2 for lmr,
    # whose mask draws are named by the global micro-batch index as on two processes
    train_tokenizer(images, None, TINY, tmp_path / "one" / "plain")
    train_tokenizer(images, None, {**lmr, "micro_batch_size": 2}, tmp_path / "one" / "lmr")
    for name in specs:
        one, two = _weights(tmp_path / "one" / name), _weights(tmp_path / "two" / name)
        for key in one:
            torch.testing.assert_close(two[key], one[key], **CLOSE, msg=f"{name}: {key}")
