"""The training-time monitor: closed-form SEC through the whole path, the registry wiring, mask pooling,
the fixed subset, and that it never moves the training run (RNG, mode, gradients, weights)."""

from __future__ import annotations

import json
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


# --------------------------------------------------------------------------- the monitor inside training

#: a small f4 conv VAE at 32 px: (4, 8, 8) latents, the latent shape of the synthetic study below
SMALL = dict(image_size=32, base_channels=8, channel_mult=[1, 2, 2], num_res_blocks=1, latent_channels=4,
             batch_size=8, steps=4, checkpoint_every=4, lr=1e-3, monitor_images=32)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """A train and a val split of shapes images (32 px, 8 classes, exact masks), on disk as prepare-data writes."""
    from diffusability.data.splits import open_image_split
    from diffusability.io import save_tensors

    folder = tmp_path_factory.mktemp("splits")
    paths = {}
    for name, (n, start) in {"train": (48, 0), "val": (64, 10_000)}.items():
        data = generate_shapes(n, 32, seed=5, start_index=start)
        paths[name] = folder / f"{name}.safetensors"
        save_tensors(paths[name], {"images": data["images"], "labels": data["labels"].astype(np.int64),
                                   "masks": data["masks"]}, metadata={"n_classes": "8"})
    return {name: open_image_split(path) for name, path in paths.items()} | {"paths": paths}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The synthetic study of the predictor's tests: fd = 10 + 20·sec + noise, 8 tokenizers in 4 clusters,
    latents (4, 8, 8)."""
    from test_analysis_predict import _write_study

    directory = tmp_path_factory.mktemp("study") / "tables"
    _write_study(directory)
    return directory


def _subset_latents(out_dir, split, size: int, seed: int):
    """The trained encoder's posterior means of the monitor's fixed subset, straight from the split (no monitor
    code): latents (n, 4, 8, 8), labels (n,), masks max-pooled by hand (n, 8, 8)."""
    from diffusability.imaging import to_model_input
    from diffusability.tokenizers import load_tokenizer

    index = fixed_subset(len(split), size, seed, split.labels)
    with torch.no_grad():
        latents = load_tokenizer(out_dir).encode(to_model_input(torch.as_tensor(split.images[index]))).mode()
    pooled = split.masks[index].reshape(len(index), 8, 4, 8, 4).any(axis=(2, 4))  # max-pool 4×4 pixels per token
    return latents.float(), split.labels[index], pooled


def test_monitor_on_the_val_subset_is_the_registry_on_the_encoders_latents(splits, tmp_path):
    """The last monitor row (final weights) equals the metrics of the final encoder's latents of the fixed val
    subset, standardised by hand, masks pooled by hand — SRSS included, which needs the val split's masks."""
    from diffusability.io import read_parquet
    from diffusability.metrics.registry import compute_metrics
    from diffusability.tokenizers import train_tokenizer

    out = train_tokenizer(splits["train"].images, splits["train"].labels, {**SMALL, "monitor_every": 2},
                          tmp_path / "tok", monitor_split=splits["val"])
    log = read_parquet(out / "train_log.parquet")
    assert log["monitor_seconds"].notna().tolist() == [step % 2 == 0 for step in log["step"]]
    last = log.iloc[-1]
    latents, labels, masks = _subset_latents(out, splits["val"], 32, seed=0)
    latents = latents.double()
    latents = ((latents - latents.mean(dim=(0, 2, 3), keepdim=True)) / latents.std(dim=(0, 2, 3), keepdim=True)).float()
    expected = compute_metrics(latents, torch.from_numpy(labels), torch.from_numpy(masks),
                               names=["viv_uniform", "lnc", "srss", "sec"], params={"srss": {"min_fg": 8, "min_bg": 8}})
    assert {"monitor_srss", "monitor_viv_uniform", "monitor_lnc", "monitor_sec"} <= set(log.columns)
    for metric, value in zip(expected["metric"], expected["value"]):
        assert last[f"monitor_{metric}"] == pytest.approx(value, rel=1e-4, abs=1e-6), metric
    assert last["monitor_n"] == 32
    assert (out / "monitor.png").stat().st_size > 5000


def test_monitor_prediction_is_the_predict_commands_and_training_is_unchanged(splits, study, tmp_path):
    """With monitor_study the row holds, per backbone and scale, exactly what `diffusability predict` writes for the
    same latents (the encoder's latents of the fixed val subset); the weights are those of a run without monitor."""
    from diffusability.cli import main
    from diffusability.io import read_parquet, save_npz
    from diffusability.tokenizers import load_tokenizer, train_tokenizer

    train = splits["train"]
    plain = train_tokenizer(train.images, train.labels, SMALL, tmp_path / "plain")
    from diffusability.analysis.monitor_predictor import study_predictor

    watched = {**SMALL, "monitor_every": 2, "monitor_study": str(study)}
    out = train_tokenizer(train.images, train.labels, watched, tmp_path / "watched", monitor_split=splits["val"],
                          predictor=study_predictor(watched, splits["val"]))
    a, b = load_tokenizer(plain).state_dict(), load_tokenizer(out).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    last = read_parquet(out / "train_log.parquet").iloc[-1]
    latents, labels, masks = _subset_latents(out, splits["val"], 32, seed=0)
    save_npz(tmp_path / "subset.npz", latents=latents.numpy(), labels=labels, masks=masks)
    args = ["predict", str(tmp_path / "subset.npz"), "--study", str(study), "--out", str(tmp_path / "p.parquet")]
    assert main(args) == 0
    predicted = read_parquet(tmp_path / "p.parquet")
    assert len(predicted) == 2  # sit at cfg 1 and 2
    for row in predicted.itertuples():
        key = f"monitor_predicted_{row.backbone}_cfg{row.cfg_scale:g}"
        assert last[key] == pytest.approx(row.predicted, rel=1e-6)
        assert last[key + "_lower"] == pytest.approx(row.lower, rel=1e-6)
        assert last[key + "_upper"] == pytest.approx(row.upper, rel=1e-6)
        for proxy, value in json.loads(row.proxies).items():
            assert last[f"monitor_{proxy}"] == pytest.approx(value, rel=1e-6), proxy
    # the default proxies the predictor does not use are still there
    assert {"monitor_srss", "monitor_viv_uniform", "monitor_lnc"} <= set(last.index)


def _train_cli(splits, spec: dict, out, capsys) -> tuple[int, str]:
    from diffusability.cli import main

    code = main(["train-tokenizer", "--spec", json.dumps(spec), "--train", str(splits["paths"]["train"]),
                 "--val", str(splits["paths"]["val"]), "--out", str(out)])
    return code, capsys.readouterr().err


def test_a_bad_study_folder_ends_the_command_with_status_2_naming_the_file(splits, study, tmp_path, capsys):
    from diffusability.io import read_parquet, write_parquet

    spec = {**SMALL, "steps": 1, "monitor_every": 1}
    code, err = _train_cli(splits, {**spec, "monitor_study": str(tmp_path / "nowhere")}, tmp_path / "a", capsys)
    assert code == 2 and "nowhere" in err

    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("tokenizers", "generation"):
        (partial / f"{name}.parquet").write_bytes((study / f"{name}.parquet").read_bytes())
    code, err = _train_cli(splits, {**spec, "monitor_study": str(partial)}, tmp_path / "b", capsys)
    assert code == 2 and "metrics.parquet" in err

    # a study of other latents: 8 channels instead of 4
    other = tmp_path / "other"
    other.mkdir()
    for name in ("metrics", "generation"):
        (other / f"{name}.parquet").write_bytes((study / f"{name}.parquet").read_bytes())
    write_parquet(read_parquet(study / "tokenizers.parquet").assign(latent_channels=8), other / "tokenizers.parquet")
    code, err = _train_cli(splits, {**spec, "monitor_study": str(other)}, tmp_path / "c", capsys)
    assert code == 2 and "tokenizers.parquet" in err and "(4, 8, 8)" in err
    assert not (tmp_path / "c" / "model.safetensors").exists()  # it failed before training


def test_the_command_monitors_the_val_split_and_plots(splits, study, tmp_path, capsys):
    from diffusability.io import read_parquet

    code, _ = _train_cli(splits, {**SMALL, "monitor_every": 2, "monitor_study": str(study)}, tmp_path / "tok", capsys)
    assert code == 0
    log = read_parquet(tmp_path / "tok" / "train_log.parquet")
    assert {"monitor_srss", "monitor_predicted_sit_cfg1", "monitor_predicted_sit_cfg2_upper"} <= set(log.columns)
    assert (tmp_path / "tok" / "monitor.png").stat().st_size > 5000


def test_the_figure_of_a_log_without_evaluations(tmp_path):
    import pandas as pd

    from diffusability.tokenizers.monitor import monitor_figure

    path = monitor_figure(pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.5]}), tmp_path / "m.png", title="t")
    assert path.stat().st_size > 1000
