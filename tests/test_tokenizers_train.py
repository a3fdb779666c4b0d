"""Tokenizer training: exact resume, outputs, errors, the objective's conventions."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from diffusability.errors import DiffusabilityError
from diffusability.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from diffusability.io import load_tensors, read_json, read_parquet
from diffusability.tokenizers import load_tokenizer, train_tokenizer
from diffusability.tokenizers.losses import VAEObjective, pyramid_distance
from diffusability.tokenizers.train import EpochOrder

TINY = dict(image_size=16, base_channels=8, channel_mult=[1, 2], num_res_blocks=1, latent_channels=3,
            batch_size=4, steps=6, checkpoint_every=3, lr=1e-3)


class TinyTeacher(nn.Module):
    """A random conv net with the domain-net interface (feature_pyramid, feature_map)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 5, 3, padding=1)
        self.b = nn.Conv2d(5, 7, 3, stride=2, padding=1)

    def feature_pyramid(self, x):
        first = F.relu(self.a(x))
        return [first, F.relu(self.b(first))]

    def feature_map(self, x, grid):
        return F.adaptive_avg_pool2d(self.feature_pyramid(x)[-1], grid)


def _images(n=10, size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _weights(directory):
    return {k: v.clone() for k, v in load_tokenizer(directory).state_dict().items()}


@pytest.mark.parametrize("extra", [
    dict(regularizer={"name": "lmr", "mask_probabilities": [0.3, 0.3, 0.3]}),
    dict(regularizer={"name": "eq", "variant": "scale", "probability": 0.7}, disc_weight=0.5, disc_start=2,
         disc_channels=4, disc_layers=1),
    dict(regularizer={"name": "mcos+mdms"}, dropout=0.1),
    dict(regularizer={"name": "pae", "hidden": 8}),  # its MCR cascade draws noise from the trainer's generator
])
def test_resumed_run_ends_with_exactly_the_weights_of_an_uninterrupted_run(tmp_path, extra):
    spec = {**TINY, **extra}
    images = _images()
    teacher = TinyTeacher() if spec["regularizer"]["name"] in ("mcos+mdms", "pae") else None
    train_tokenizer(images, None, spec, tmp_path / "straight", teacher=teacher)
    assert train_tokenizer(images, None, spec, tmp_path / "resumed", teacher=teacher, stop_after=3) is None
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    train_tokenizer(images, None, spec, tmp_path / "resumed", teacher=teacher)
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    log_a = read_parquet(tmp_path / "straight" / "train_log.parquet")
    log_b = read_parquet(tmp_path / "resumed" / "train_log.parquet")
    assert list(log_a["step"]) == list(range(1, 7)) == list(log_b["step"])
    np.testing.assert_array_equal(log_a["loss"].to_numpy(), log_b["loss"].to_numpy())
    assert {"step", "loss", "nll", "kl", "seconds"} <= set(log_a.columns)


def test_outputs_and_load_tokenizer_round_trip(tmp_path):
    train_tokenizer(_images(), np.arange(10), {**TINY, "steps": 2}, tmp_path)
    config = read_json(tmp_path / "config.json")
    assert config["channel_mult"] == [1, 2] and config["steps"] == 2
    model = load_tokenizer(tmp_path)
    assert not model.training and model.latent_channels == 3 and model.downsample_factor == 2
    assert (tmp_path / "checkpoints").is_dir()


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(DiffusabilityError, match="unknown key"):
        train_tokenizer(_images(), None, {**TINY, "learning_rate": 1}, tmp_path)
    with pytest.raises(DiffusabilityError, match="image_size"):
        train_tokenizer(_images(size=8), None, TINY, tmp_path)
    with pytest.raises(DiffusabilityError, match="uint8"):
        train_tokenizer(_images().astype(np.float32), None, TINY, tmp_path)
    with pytest.raises(DiffusabilityError, match="teacher"):
        train_tokenizer(_images(), None, {**TINY, "regularizer": {"name": "repa"}}, tmp_path)
    with pytest.raises(DiffusabilityError, match="labels"):
        train_tokenizer(_images(), np.arange(3), TINY, tmp_path)
    with pytest.raises(DiffusabilityError, match="not found"):
        load_tokenizer(tmp_path / "nothing")


def test_precision_is_fp32_or_bf16(tmp_path):
    with pytest.raises(DiffusabilityError, match="precision 'fp16'"):
        train_tokenizer(_images(), None, {**TINY, "precision": "fp16"}, tmp_path)


def test_a_checkpoint_of_another_run_is_set_aside_and_training_starts_fresh(tmp_path):
    """Finding A/B: neither a changed setting nor changed inputs resume (or return) the old model."""
    images, other = _images(), _images()[::-1].copy()
    train_tokenizer(images, None, {**TINY, "lr": 2e-3}, tmp_path / "fresh")  # the reference runs
    train_tokenizer(other, None, TINY, tmp_path / "other")
    # a finished run, then a changed setting: the old checkpoints move aside, no error, new weights
    train_tokenizer(images, None, TINY, tmp_path / "run")
    train_tokenizer(images, None, {**TINY, "lr": 2e-3}, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints.superseded").is_dir()
    fresh, changed = _weights(tmp_path / "fresh"), _weights(tmp_path / "run")
    assert all(torch.equal(fresh[k], changed[k]) for k in fresh)
    # changed inputs, same spec: a fresh run on the new images, equal to a straight run on them
    train_tokenizer(other, None, TINY, tmp_path / "run")
    expected, got = _weights(tmp_path / "other"), _weights(tmp_path / "run")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    # a checkpoint without a run identity (older version) is set aside too
    state = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    del state["identity"]
    save_checkpoint(tmp_path / "run" / "checkpoints", state["step"], state)
    train_tokenizer(other, None, TINY, tmp_path / "run")
    assert latest_checkpoint(tmp_path / "run" / "checkpoints.superseded") is not None


def test_the_input_paths_define_the_identity(tmp_path):
    """Same arrays, but the named input file changed: the interrupted run is not resumed."""
    from diffusability.tokenizers.train import training_identity
    from diffusability.tokenizers.spec import as_spec

    data = tmp_path / "train.bin"
    data.write_bytes(b"first")
    before = training_identity(as_spec(TINY), {"train": data, "teacher": None})
    data.write_bytes(b"second")
    assert training_identity(as_spec(TINY), {"train": data, "teacher": None}) != before
    assert training_identity(as_spec({**TINY, "name": "renamed", "checkpoint_every": 1}),
                             {"train": data, "teacher": None}) == \
        training_identity(as_spec(TINY), {"train": data, "teacher": None})


def test_checkpoints_load_without_unpickling_code(tmp_path):
    """Finding 9: a planted checkpoint that would run code on load is refused with a clear error."""
    train_tokenizer(_images(), None, TINY, tmp_path, stop_after=3)
    path = latest_checkpoint(tmp_path / "checkpoints")

    class Planted:
        def __reduce__(self):
            return (print, ("planted code ran",))

    torch.save({"identity": Planted()}, path)
    with pytest.raises(DiffusabilityError, match="unreadable checkpoint"):
        load_checkpoint(path)


BF16_RUN = textwrap.dedent("""
    import sys
    import numpy as np
    from diffusability.tokenizers import train_tokenizer
    images = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    spec = dict({spec!r}, precision="bf16")
    train_tokenizer(images, None, spec, sys.argv[1])
""")


def test_bf16_trains_finitely_and_keeps_float32_weights_and_checkpoints(tmp_path):
    """precision bf16 (accelerate autocast, on the CPU too): finite losses, float32 weights, optimizer
    states and checkpoints, and not the fp32 run's weights (autocast really ran)."""
    spec = {**TINY, "steps": 4, "checkpoint_every": 2, "disc_weight": 0.5, "disc_start": 2, "disc_channels": 4,
            "disc_layers": 1, "regularizer": {"name": "lmr", "mask_probabilities": [0.3, 0.3, 0.3]}}
    # a fresh process: accelerate's precision is fixed once per process
    result = subprocess.run([sys.executable, "-c", BF16_RUN.format(spec=spec), str(tmp_path / "bf16")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    weights = load_tensors(tmp_path / "bf16" / "model.safetensors")
    assert all(v.dtype == torch.float32 and bool(torch.isfinite(v).all()) for v in weights.values())
    assert read_json(tmp_path / "bf16" / "config.json")["precision"] == "bf16"
    log = read_parquet(tmp_path / "bf16" / "train_log.parquet")
    assert np.isfinite(log[["loss", "nll", "kl", "l1"]].to_numpy()).all()
    assert np.isfinite(log["disc"].to_numpy()[2:]).all()  # the GAN ran (from step 2)
    state = load_checkpoint(latest_checkpoint(tmp_path / "bf16" / "checkpoints"))
    float_tensors = [v for part in ("model", "regularizer", "objective") for v in state[part].values()
                     if v.is_floating_point()]
    float_tensors += [v for slot in state["optimizer"]["state"].values() for v in slot.values()
                      if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() > 0]
    assert float_tensors and all(v.dtype == torch.float32 for v in float_tensors)
    train_tokenizer(_images(), None, spec, tmp_path / "fp32")
    fp32 = load_tensors(tmp_path / "fp32" / "model.safetensors")
    assert max(float((weights[k] - fp32[k]).abs().max()) for k in fp32) > 1e-4


def test_epoch_order_visits_every_image_once_per_epoch():
    order = EpochOrder(seed=0, count=10, batch_size=3)
    assert order.batches_per_epoch == 3
    first = torch.cat([order.indices(s) for s in range(3)])
    second = torch.cat([order.indices(s) for s in range(3, 6)])
    assert len(set(first.tolist())) == 9 and len(set(second.tolist())) == 9
    assert not torch.equal(first, second)
    assert torch.equal(EpochOrder(0, 10, 3).indices(4), order.indices(4))


def test_nll_is_summed_l1_over_pixels_with_logvar_ldm_convention():
    objective = VAEObjective()
    target, reconstruction = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    assert objective.nll(reconstruction, target).item() == pytest.approx(0.5 * 48)
    with torch.no_grad():
        objective.logvar.fill_(1.0)
    # Σ (0.5/e + 1) over 48 elements, averaged over the batch
    assert objective.nll(reconstruction, target).item() == pytest.approx(48 * (0.5 / np.e + 1.0), rel=1e-6)


def test_perceptual_distance_is_broadcast_per_pixel_and_zero_for_identical_images():
    torch.manual_seed(0)
    teacher = TinyTeacher()
    objective = VAEObjective(teacher=teacher, perceptual_weight=2.0)
    x = torch.rand(2, 3, 8, 8)
    y = torch.rand(2, 3, 8, 8)
    assert objective.perceptual_distance(x, x).abs().max().item() < 1e-10
    distance = pyramid_distance(teacher.feature_pyramid(x), teacher.feature_pyramid(y))
    # brute force for one image: levels summed, per level Σ_F over unit vectors, mean over positions
    expected = 0.0
    for a, b in zip(teacher.feature_pyramid(x[:1]), teacher.feature_pyramid(y[:1])):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        expected += ((a - b) ** 2).sum(dim=1).mean().item()
    assert distance[0].item() == pytest.approx(expected, rel=1e-5)
    l1 = (x - y).abs().sum(dim=(1, 2, 3))
    nll = objective.nll(y, x).item()
    assert nll == pytest.approx(((l1 + 2.0 * distance * 3 * 64).sum() / 2).item(), rel=1e-5)


def test_hinge_loss_closed_form_and_gan_switched_on_at_disc_start():
    from diffusability.tokenizers.losses import PatchDiscriminator, hinge_discriminator_loss

    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # real: ReLU(1 − r) = [0, 0.5, 2] → mean 5/6; fake: ReLU(1 + f) = [0, 1, 2] → mean 1
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1.0))
    assert PatchDiscriminator(layers=3, channels=8)(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 2, 2)
    objective = VAEObjective(disc_weight=0.5, disc_start=3, disc_channels=4, disc_layers=1)
    assert not objective.gan_active(2) and objective.gan_active(3)
    layer = torch.randn(3, 4, 4, 4, requires_grad=True)
    reconstruction = F.conv2d(torch.randn(2, 4, 16, 16), layer, padding=1)
    nll = reconstruction.abs().sum()
    term, weight = objective.generator_gan_term(reconstruction, nll, layer, step=2)
    assert term.item() == 0.0 and weight.item() == 0.0
    term, weight = objective.generator_gan_term(reconstruction, nll, layer, step=3)
    assert weight.item() > 0 and term.requires_grad
    assert VAEObjective().discriminator is None  # off by default


@pytest.mark.slow
def test_embedded_default_beats_its_untrained_self(tmp_path):
    from diffusability.data.shapes import generate_shapes
    from diffusability.reconstruction.quality import mean_psnr, psnr_uint8
    from diffusability.reconstruction.measure import reconstruct
    from diffusability.tokenizers.factory import initial_tokenizer

    train = generate_shapes(1000, 32, seed=0)
    val = generate_shapes(100, 32, seed=1)
    train_tokenizer(train["images"], train["labels"], {"checkpoint_every": 1000}, tmp_path)
    trained = mean_psnr(psnr_uint8(val["images"], reconstruct(load_tokenizer(tmp_path), val["images"], 50)))
    untrained = mean_psnr(psnr_uint8(val["images"], reconstruct(initial_tokenizer({}).eval(), val["images"], 50)))
    assert trained > untrained + 3.0, (trained, untrained)


def test_the_monitor_logs_proxies_and_leaves_the_weights_unchanged(tmp_path):
    """monitor_every adds monitor_* columns every N steps; the trained weights are those of a run without it."""
    images, labels = _images(), np.arange(len(_images())) % 2
    train_tokenizer(images, labels, TINY, tmp_path / "plain")
    train_tokenizer(images, labels, {**TINY, "monitor_every": 3, "monitor_images": 8}, tmp_path / "monitored")
    plain, monitored = _weights(tmp_path / "plain"), _weights(tmp_path / "monitored")
    assert all(torch.equal(plain[k], monitored[k]) for k in plain)
    log = read_parquet(tmp_path / "monitored" / "train_log.parquet")
    assert "monitor_lnc" in log.columns
    assert log["monitor_lnc"].notna().tolist() == [step % 3 == 0 for step in log["step"]]
