"""train-tokenizer → encode → reconstruction through the CLI, on tiny generated splits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusability.cli import main
from diffusability.teacher.domain_net import DomainClassifier
from diffusability.io import load_tensors, read_parquet, save_tensors, write_json
from diffusability.tokenizers import load_tokenizer
from diffusability.latents.statistics import channel_statistics
from diffusability.latents.encode import posterior_noise

SPEC = dict(image_size=16, base_channels=8, channel_mult=[1, 2], num_res_blocks=1, latent_channels=3,
            batch_size=8, steps=4, checkpoint_every=2, lr=2e-3)


def _split(path, n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    masks = np.zeros((n, 16, 16), dtype=bool)
    masks[:, 4:9, 2:7] = True
    save_tensors(path, {"images": images, "labels": rng.integers(0, 2, n).astype(np.int64), "masks": masks})


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizer_stage")
    _split(root / "train.safetensors", 20, 0)
    _split(root / "val.safetensors", 12, 1)
    torch.manual_seed(0)
    net = DomainClassifier(num_classes=2, image_size=16, width=8)
    save_tensors(root / "teacher" / "model.safetensors", net.state_dict())
    write_json(root / "teacher" / "config.json", net.config())
    spec = {**SPEC, "regularizer": {"name": "mcos", "weight": 0.5}}
    assert main(["train-tokenizer", "--spec", json.dumps(spec), "--train", str(root / "train.safetensors"),
                 "--teacher", str(root / "teacher"), "--out", str(root / "tok")]) == 0
    return root


def test_encode_writes_latents_masks_and_channel_stats(stage):
    spec = {"seed": 3, "batch_size": 5}
    args = ["encode", "--tokenizer", str(stage / "tok"), "--train", str(stage / "train.safetensors"),
            "--val", str(stage / "val.safetensors"), "--out"]
    assert main(args + [str(stage / "lat"), "--spec", json.dumps(spec)]) == 0
    train = load_tensors(stage / "lat" / "train.safetensors")
    val = load_tensors(stage / "lat" / "val.safetensors")
    stats = load_tensors(stage / "lat" / "stats.safetensors")
    assert train["latents"].shape == (20, 3, 8, 8) and train["latents"].dtype == torch.float32
    assert val["masks"].shape == (12, 8, 8) and val["masks"].dtype == torch.bool
    # "max" pooling of pixel rows 4..8, cols 2..6 with 2×2 cells: cells 2..4 × 1..3
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2:5, 1:4] = True
    assert torch.equal(val["masks"][0], expected)
    flat = train["latents"].double().transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(stats["mean"].double(), flat.mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats["std"].double(), flat.std(1, unbiased=True), rtol=1e-5, atol=1e-6)
    # a different batch size gives the same latents: noise depends on the image index only
    assert main(args + [str(stage / "lat2"), "--spec", json.dumps({"seed": 3, "batch_size": 7})]) == 0
    assert torch.equal(load_tensors(stage / "lat2" / "train.safetensors")["latents"], train["latents"])
    # and they are posterior samples: mean + std·ε, not the mode
    model = load_tokenizer(stage / "tok")
    from diffusability.imaging import to_model_input
    with torch.no_grad():
        posterior = model.encode(to_model_input(load_tensors(stage / "train.safetensors")["images"]))
    noise = posterior_noise(3, "train", 0, 20, (3, 8, 8))
    torch.testing.assert_close(train["latents"], posterior.mean + posterior.std * noise, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(train["latents"], posterior.mean)


def test_encode_writes_mirrored_latents_on_request(stage):
    from diffusability.latents.encode import encode_images

    args = ["encode", "--tokenizer", str(stage / "tok"), "--train", str(stage / "train.safetensors"),
            "--val", str(stage / "val.safetensors"), "--out", str(stage / "flip")]
    assert main(args + ["--spec", json.dumps({"seed": 3, "batch_size": 5, "flip": True})]) == 0
    train = load_tensors(stage / "flip" / "train.safetensors")
    images = load_tensors(stage / "train.safetensors")["images"]
    model = load_tokenizer(stage / "tok")
    expected = encode_images(model, images.flip(2), 3, "train_flip", 5)
    assert torch.equal(train["latents_flip"], expected)
    assert not torch.allclose(train["latents_flip"], train["latents"])
    # the mirrored images are really mirrored: their pixels are the originals reversed along W
    assert torch.equal(images.flip(2)[:, :, 0], images[:, :, -1])


def test_encode_rejects_unknown_spec_keys(stage, capsys):
    code = main(["encode", "--tokenizer", str(stage / "tok"), "--train", str(stage / "train.safetensors"),
                 "--val", str(stage / "val.safetensors"), "--out", str(stage / "bad"),
                 "--spec", json.dumps({"mask_pool": "max"})])
    assert code == 2 and "mask_pool" in capsys.readouterr().err


def test_encode_writes_the_studys_normalisation_instead_of_the_measured_one(stage, tmp_path, capsys):
    """latent_normalization (a released model's scaling factor): the same latents, the given mean/std."""
    base = ["encode", "--tokenizer", str(stage / "tok"), "--train", str(stage / "train.safetensors"),
            "--val", str(stage / "val.safetensors"), "--out"]
    assert main(base + [str(tmp_path / "measured"), "--spec", json.dumps({"seed": 3, "batch_size": 5})]) == 0
    measured = load_tensors(tmp_path / "measured" / "stats.safetensors")
    for name, normalization, mean, std in (
            ("scale", {"scale": 0.5}, [0.0] * 3, [2.0] * 3),
            ("lists", {"mean": [0.1, -0.2, 0.3], "std": [1.5, 2.5, 3.5]}, [0.1, -0.2, 0.3], [1.5, 2.5, 3.5])):
        spec = {"seed": 3, "batch_size": 5, "normalization": normalization}
        assert main(base + [str(tmp_path / name), "--spec", json.dumps(spec)]) == 0
        stats = load_tensors(tmp_path / name / "stats.safetensors")
        assert torch.equal(stats["mean"], torch.tensor(mean)) and torch.equal(stats["std"], torch.tensor(std))
        assert not torch.allclose(stats["std"], measured["std"])
        for split in ("train", "val"):  # the latents themselves do not depend on the normalisation
            assert torch.equal(load_tensors(tmp_path / name / f"{split}.safetensors")["latents"],
                               load_tensors(tmp_path / "measured" / f"{split}.safetensors")["latents"])
    capsys.readouterr()
    for normalization, expect in (({"mean": [0.0, 0.0], "std": [1.0, 1.0]}, "normalization.mean has 2 values but "
                                                                            "the latents have 3 channels"),
                                  ({"scale": 0}, "normalization.scale must be a positive number"),
                                  ({"scale": 1.0, "mean": [0.0]}, "normalization must be"),
                                  ({"mean": [0.0] * 3, "std": [1.0, -1.0, 1.0]}, "normalization.std must be a list "
                                                                                  "of positive numbers")):
        out = tmp_path / "refused"
        code = main(base + [str(out), "--spec", json.dumps({"normalization": normalization})])
        err = capsys.readouterr().err
        assert code == 2 and expect in err and "Traceback" not in err, err
        assert not out.exists()  # refused before any encoding


def test_fixed_normalization_closed_forms():
    from diffusability.latents.statistics import fixed_normalization

    mean, std = fixed_normalization({"scale": 0.18215}, 4)
    assert torch.equal(mean, torch.zeros(4)) and torch.allclose(std, torch.full((4,), 1 / 0.18215))
    mean, std = fixed_normalization({"mean": [1, 2], "std": [3, 4]}, 2)
    assert mean.tolist() == [1.0, 2.0] and std.tolist() == [3.0, 4.0] and std.dtype == torch.float32


def test_reconstruction_rows_for_trained_and_untrained(stage):
    out = stage / "rows.parquet"
    assert main(["reconstruction", "--tokenizer", str(stage / "tok"), "--data", str(stage / "val.safetensors"),
                 "--feature-net", str(stage / "teacher"), "--spec", json.dumps({"batch_size": 5}),
                 "--out", str(out)]) == 0
    rows = read_parquet(out)
    assert list(rows.columns) == ["metric", "value", "direction", "params", "n"]
    assert set(rows["metric"]) == {"psnr", "ssim", "rfd", "psnr_untrained", "ssim_untrained", "rfd_untrained"}
    assert (rows["n"] == 12).all()
    assert json.loads(rows["params"][0])["posterior"] == "mean"
    values = dict(zip(rows["metric"], rows["value"]))
    assert np.isfinite(list(values.values())).all() and values["rfd"] >= 0 and -1 <= values["ssim"] <= 1


def test_posterior_noise_blocks_are_contiguous():
    whole = posterior_noise(0, "val", 0, 600, (2,))
    torch.testing.assert_close(posterior_noise(0, "val", 250, 530, (2,)), whole[250:530], rtol=0, atol=0)
    assert not torch.equal(posterior_noise(0, "train", 0, 10, (2,)), whole[:10])


def test_channel_statistics_closed_form():
    latents = torch.arange(24, dtype=torch.float32).view(2, 3, 2, 2)
    mean, std = channel_statistics(latents)
    # channel 0 holds 0..3 and 12..15
    values = torch.tensor([0, 1, 2, 3, 12, 13, 14, 15], dtype=torch.float64)
    assert mean[0].item() == pytest.approx(values.mean().item())
    assert std[0].item() == pytest.approx(values.std(unbiased=True).item(), rel=1e-6)


def test_a_killed_encode_resumes_after_its_last_chunk_and_ends_with_the_same_files(stage, tmp_path, monkeypatch):
    """encode writes its files chunk by chunk with a progress record; a job killed after the first chunk
    continues from there when rerun (the done chunk is not encoded again) and its latent files are
    byte-identical to those of an uninterrupted run. A partial file of another spec is not resumed."""
    from diffusability.io import ResumableTensorFile
    from diffusability.latents import encode

    spec = json.dumps({"seed": 5, "batch_size": 3, "flip": True, "chunk": 8})  # train: [0, 8), [8, 16), [16, 20)
    args = ["encode", "--tokenizer", str(stage / "tok"), "--train", str(stage / "train.safetensors"),
            "--val", str(stage / "val.safetensors"), "--spec", spec, "--out"]
    assert main(args + [str(tmp_path / "straight")]) == 0

    original, calls = encode.encode_images, []

    def dies_on_the_second_chunk(*a, **kw):
        calls.append((kw["start"], kw["stop"]))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the job is killed mid-run
        return original(*a, **kw)

    monkeypatch.setattr(encode, "encode_images", dies_on_the_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        main(args + [str(tmp_path / "killed")])
    assert (tmp_path / "killed" / "train.safetensors.partial").is_file()
    assert not (tmp_path / "killed" / "train.safetensors").exists()

    calls.clear()
    monkeypatch.setattr(encode, "encode_images", lambda *a, **kw: (calls.append((kw["start"], kw["stop"])),
                                                                       original(*a, **kw))[1])
    assert main(args + [str(tmp_path / "killed")]) == 0
    assert calls[0] == (8, 16)  # the finished chunk [0, 8) was kept
    for name in ("train", "val"):  # written by our own deterministic writer: compare bytes
        assert (tmp_path / "killed" / f"{name}.safetensors").read_bytes() == \
            (tmp_path / "straight" / f"{name}.safetensors").read_bytes(), name
    killed, straight = (load_tensors(tmp_path / run / "stats.safetensors") for run in ("killed", "straight"))
    assert all(torch.equal(killed[k], straight[k]) for k in ("mean", "std"))
    assert not list((tmp_path / "killed").glob("*.partial")) and not list((tmp_path / "killed").glob("*.progress.json"))

    # Another fingerprint (or layout) starts over instead of mixing contents.
    first = ResumableTensorFile(tmp_path / "x.safetensors", {"a": ("float32", (4, 2))}, fingerprint={"spec": 1})
    first.arrays["a"][:2] = 1.0
    first.mark("a", 2)
    del first
    assert ResumableTensorFile(tmp_path / "x.safetensors", {"a": ("float32", (4, 2))},
                               fingerprint={"spec": 1}).done["a"] == 2
    other = ResumableTensorFile(tmp_path / "x.safetensors", {"a": ("float32", (4, 2))}, fingerprint={"spec": 2})
    assert other.done["a"] == 0 and not other.resumed
    other.arrays["a"][:] = 3.0
    other.mark("a", 4)
    other.commit()
    assert torch.equal(load_tensors(tmp_path / "x.safetensors")["a"], torch.full((4, 2), 3.0))
