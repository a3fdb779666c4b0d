"""The training-time monitor: closed-form SEC through the whole path, the registry wiring, mask pooling,
the fixed subset, and that it never moves the training run (RNG, mode, gradients, weights)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffusability.data.shapes import generate_shapes
from diffusability.errors import DiffusabilityError
from diffusability.tokenizers.factory import build_tokenizer
from diffusability.tokenizers.monitor import TokenizerMonitor, fixed_subset, monitor_row


@pytest.fixture(scope="module")
def shapes():
    return generate_shapes(64, 32, seed=3)


def _dct_basis(n: int, k: int) -> torch.Tensor:
    """Row k of the orthonormal DCT-II: c_k cos(π (2i + 1) k / (2n))."""
    c = math.sqrt((1 if k == 0 else 2) / n)
    return torch.tensor([c * math.cos(math.pi * (2 * i + 1) * k / (2 * n)) for i in range(n)], dtype=torch.float64)


def _amplitude_encoder(pattern: torch.Tensor):
    """An encoder whose latents are (per-image mean brightness) × ``pattern`` (8, 8) on 4 channels."""
    def encode(x):
        amplitude = x.mean(dim=(1, 2, 3)).double() + 2.0  # > 0, varies across images
        return (amplitude[:, None, None, None] * pattern[None, None] * torch.arange(1.0, 5.0)[None, :, None, None]).float()
    return encode


def test_sec_of_known_spectra_through_the_monitor(shapes):
    """Latents that are only DC (constant per image) have SEC 0; only the highest DCT frequency, SEC 1."""
    constant = monitor_row(_amplitude_encoder(torch.ones(8, 8, dtype=torch.float64)), shapes["images"], names=["sec"])
    assert constant["monitor_sec"] == pytest.approx(0.0, abs=1e-9)
    top = torch.outer(_dct_basis(8, 7), _dct_basis(8, 7))
    high = monitor_row(_amplitude_encoder(top), shapes["images"], names=["sec"])
    for key in ("monitor_sec", "monitor_sec_r0.25", "monitor_sec_r0.75"):
        assert high[key] == pytest.approx(1.0, abs=1e-6)
    assert high["monitor_n"] == 64 and high["monitor_seconds"] > 0


def test_row_is_the_registry_on_standardised_latents_with_max_pooled_masks(shapes):
    """The monitor's row equals the registry run by hand: own per-channel statistics, masks max-pooled 4×4."""
    from diffusability.imaging import to_model_input
    from diffusability.metrics.registry import compute_metrics

    def encode(x):  # a fixed random linear map of 4×4 patches: (B, 4, 8, 8)
        weight = torch.from_numpy(np.random.default_rng(0).normal(size=(4, 3, 4, 4)).astype(np.float32))
        return torch.nn.functional.conv2d(x, weight, stride=4)

    row = monitor_row(encode, shapes["images"], shapes["labels"], shapes["masks"], batch_size=16)
    latents = encode(to_model_input(torch.as_tensor(shapes["images"]))).double()
    latents = (latents - latents.mean(dim=(0, 2, 3), keepdim=True)) / latents.std(dim=(0, 2, 3), keepdim=True)
    pooled = torch.from_numpy(shapes["masks"].reshape(64, 8, 4, 8, 4).any(axis=(2, 4)))
    expected = compute_metrics(latents.float(), torch.from_numpy(shapes["labels"]), pooled,
                               names=["viv_uniform", "lnc", "srss", "sec"],
                               params={"srss": {"min_fg": 8, "min_bg": 8}})
    for metric, value in zip(expected["metric"], expected["value"]):
        assert row[f"monitor_{metric}"] == pytest.approx(value, rel=1e-4, abs=1e-6), metric
    # the batch size of the encoding changes nothing
    again = monitor_row(encode, shapes["images"], shapes["labels"], shapes["masks"], batch_size=64)
    assert again["monitor_viv_uniform"] == pytest.approx(row["monitor_viv_uniform"], rel=1e-5)


def test_defaults_follow_the_inputs_and_explicit_names_are_checked(shapes):
    encode = _amplitude_encoder(torch.outer(_dct_basis(8, 1), _dct_basis(8, 2)) + 0.3)
    row = monitor_row(encode, shapes["images"], shapes["labels"])  # no masks: no SRSS
    assert "monitor_srss" not in row and {"monitor_viv_uniform", "monitor_lnc", "monitor_sec"} <= set(row)
    assert set(monitor_row(encode, shapes["images"])) >= {"monitor_sec"}  # no labels: no VIV, LNC
    with pytest.raises(DiffusabilityError, match="masks"):
        monitor_row(encode, shapes["images"], shapes["labels"], names=["srss"])
    with pytest.raises(DiffusabilityError, match=r"\(N, C, h, w\)"):
        monitor_row(lambda x: x.mean(dim=1), shapes["images"], names=["sec"])


def test_fixed_subset_is_balanced_seeded_and_has_two_per_class():
    labels = np.repeat(np.arange(1000), 5)  # ImageNet-like: 1000 classes, 256 images
    subset = fixed_subset(len(labels), 256, seed=0, labels=labels)
    counts = np.bincount(labels[subset])
    assert len(subset) == 256 and set(counts[counts > 0]) == {2}
    assert np.array_equal(subset, fixed_subset(len(labels), 256, seed=0, labels=labels))
    assert not np.array_equal(subset, fixed_subset(len(labels), 256, seed=1, labels=labels))
    plain = fixed_subset(100, 10, seed=0)
    assert len(set(plain)) == 10 and np.all(np.diff(plain) > 0)


def test_monitor_leaves_the_training_run_untouched(shapes):
    """Steps with the monitor between them end with the weights of steps without it: the monitor's own
    random draws (a sampling encoder here) are forked off, the mode is restored, no gradient is made."""
    def train(with_monitor: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = build_tokenizer({"channel_mult": [1, 2, 2], "base_channels": 8, "dropout": 0.1})
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        x = torch.as_tensor(shapes["images"][:8]).permute(0, 3, 1, 2).float() / 127.5 - 1
        sampling = lambda images: model.encode(images).sample()  # noqa: E731 — draws from the global RNG
        for _ in range(3):
            posterior = model.encode(x)
            loss = (model.decode(posterior.sample()) - x).pow(2).mean()  # global-RNG noise and dropout
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if with_monitor:
                optimizer.zero_grad(set_to_none=True)
                state = torch.get_rng_state()
                monitor_row(sampling, shapes["images"], names=["sec"])
                assert torch.equal(state, torch.get_rng_state())
                TokenizerMonitor(shapes["images"][:16], names=["sec"])(model)
                assert model.training and all(p.grad is None for p in model.parameters())
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(train(False), train(True)):
        assert torch.equal(a, b)


def test_monitor_from_split_on_a_real_tokenizer(shapes):
    monitor = TokenizerMonitor.from_split(shapes["images"], shapes["labels"], shapes["masks"], size=32, seed=0)
    assert len(monitor.images) == 32 and set(np.bincount(monitor.labels)) == {4}
    row = monitor(build_tokenizer({"channel_mult": [1, 2, 2]}))
    assert {"monitor_viv_uniform", "monitor_lnc", "monitor_srss", "monitor_sec"} <= set(row)
    assert all(np.isfinite(v) for v in row.values())
