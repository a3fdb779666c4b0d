"""One split, two storages: a `.safetensors` file and memory-mapped shards give every stage the same data.

The shard reader's indexing is checked against numpy on random shard layouts (hypothesis), and the
teacher, tokenizer, encode and reconstruction commands are run on the same tiny split stored both ways:
their outputs must be identical, because a study must not depend on where its images live.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusability.cli import main
from diffusability.data.shards import ConcatenatedArrays, write_array_shards
from diffusability.data.splits import is_shard_index, open_image_split
from diffusability.errors import DiffusabilityError
from diffusability.teacher.domain_net import DomainClassifier
from diffusability.io import load_tensors, read_parquet, save_tensors, write_json

TOKENIZER = dict(image_size=16, base_channels=8, channel_mult=[1, 2], num_res_blocks=1, latent_channels=3,
                 batch_size=6, steps=3, checkpoint_every=2, lr=2e-3)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 6), min_size=1, max_size=5), data=st.data())
def test_concatenated_arrays_index_like_numpy(lengths, data):
    rng = np.random.default_rng(sum(lengths))
    parts = [rng.integers(0, 255, (n, 2, 3)).astype(np.uint8) for n in lengths]
    whole = np.concatenate(parts)
    view = ConcatenatedArrays(parts, (2, 3), np.uint8)
    assert view.shape == whole.shape and len(view) == len(whole)
    n = len(whole)
    start = data.draw(st.integers(-n - 2, n + 2))
    stop = data.draw(st.integers(-n - 2, n + 2))
    step = data.draw(st.sampled_from([None, 1, 2, 3]))
    np.testing.assert_array_equal(view[start:stop:step], whole[start:stop:step])
    if n:
        indices = data.draw(st.lists(st.integers(-n, n - 1), max_size=12))  # unordered, repeats, negatives
        np.testing.assert_array_equal(view[np.array(indices, dtype=np.int64)], whole[np.array(indices, dtype=np.int64)])
        np.testing.assert_array_equal(view[torch.tensor(indices, dtype=torch.long)], whole[indices])
        i = data.draw(st.integers(-n, n - 1))
        np.testing.assert_array_equal(view[i], whole[i])
    with pytest.raises(DiffusabilityError, match="out of range"):
        view[n]


def _split(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, 16, 16), dtype=bool)
    masks[:, 4:9, 2:7] = True
    valid = np.ones_like(masks)
    valid[:, 0] = False
    return {"images": rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
            "labels": rng.integers(0, 3, n).astype(np.int64), "masks": masks, "mask_valid": valid}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same train/val splits as files and as shards (odd shard sizes: batches straddle shards)."""
    root = tmp_path_factory.mktemp("splits")
    paths = {}
    for name, n, seed in (("train", 20, 0), ("val", 11, 1)):
        split = _split(n, seed)
        save_tensors(root / f"{name}.safetensors", split, {"n_classes": "3"})
        write_array_shards(split, root / "shards" / name, shard_size=7 if name == "train" else 4, n_classes=3)
        paths[name] = {"file": root / f"{name}.safetensors", "shards": root / "shards" / name / "index.json"}
    torch.manual_seed(0)
    net = DomainClassifier(num_classes=3, image_size=16, width=8)
    save_tensors(root / "teacher" / "model.safetensors", net.state_dict())
    write_json(root / "teacher" / "config.json", net.config())
    return root, paths


def test_open_image_split_reads_both_storages_alike(stores):
    _, paths = stores
    for name in ("train", "val"):
        file, shards = (open_image_split(paths[name][kind], need_masks=True) for kind in ("file", "shards"))
        assert is_shard_index(paths[name]["shards"]) and not is_shard_index(paths[name]["file"])
        assert len(file) == len(shards) and file.n_classes == shards.n_classes == 3
        np.testing.assert_array_equal(np.asarray(shards.images), file.images)
        np.testing.assert_array_equal(shards.labels, file.labels)
        np.testing.assert_array_equal(np.asarray(shards.masks), file.masks)
        np.testing.assert_array_equal(np.asarray(shards.mask_valid), file.mask_valid)


def test_open_image_split_errors_name_the_problem(tmp_path):
    with pytest.raises(DiffusabilityError, match="not found"):
        open_image_split(tmp_path / "absent.safetensors")
    with pytest.raises(DiffusabilityError, match="index.json"):
        open_image_split(tmp_path / "images.npz")
    save_tensors(tmp_path / "nolabels.safetensors", {"images": np.zeros((2, 4, 4, 3), np.uint8)})
    with pytest.raises(DiffusabilityError, match="'labels'"):
        open_image_split(tmp_path / "nolabels.safetensors")
    save_tensors(tmp_path / "nomasks.safetensors", {"images": np.zeros((2, 4, 4, 3), np.uint8),
                                                    "labels": np.zeros(2, np.int64)})
    with pytest.raises(DiffusabilityError, match="no foreground masks"):
        open_image_split(tmp_path / "nomasks.safetensors", need_masks=True)


def _run(*args) -> None:
    assert main([str(a) for a in args]) == 0


def test_every_stage_gives_the_same_result_on_file_and_shards(stores, monkeypatch):
    root, paths = stores
    outputs = {}
    for kind in ("file", "shards"):
        if kind == "shards":  # no stage may turn a whole memory-mapped split into one array
            def refuse(self, *args, **kwargs):
                raise AssertionError("a whole shard split was materialised")
            monkeypatch.setattr(ConcatenatedArrays, "__array__", refuse)
        out = root / kind
        teacher_spec = {"seed": 0, "width": 8, "steps": 3, "batch_size": 8}
        _run("train-teacher", "--spec", json.dumps(teacher_spec), "--train", paths["train"][kind],
             "--val", paths["val"][kind], "--out", out / "teacher")
        spec = {**TOKENIZER, "regularizer": {"name": "mcos", "weight": 0.5}}
        _run("train-tokenizer", "--spec", json.dumps(spec), "--train", paths["train"][kind],
             "--teacher", root / "teacher", "--out", out / "tok")
        _run("encode", "--tokenizer", out / "tok", "--train", paths["train"][kind], "--val", paths["val"][kind],
             "--spec", json.dumps({"seed": 3, "batch_size": 5, "flip": True, "mask_pooling": "fraction"}),
             "--out", out / "lat")
        _run("reconstruction", "--tokenizer", out / "tok", "--data", paths["val"][kind],
             "--feature-net", root / "teacher", "--spec", json.dumps({"batch_size": 4}), "--out", out / "rec.parquet")
        outputs[kind] = {
            "teacher": load_tensors(out / "teacher" / "model.safetensors"),
            "tokenizer": load_tensors(out / "tok" / "model.safetensors"),
            **{f"latents_{s}": load_tensors(out / "lat" / f"{s}.safetensors") for s in ("train", "val", "stats")},
            "reconstruction": read_parquet(out / "rec.parquet")[["metric", "value", "n"]],
        }
    file, shards = outputs["file"], outputs["shards"]
    for key in ("teacher", "tokenizer", "latents_train", "latents_val", "latents_stats"):
        assert file[key].keys() == shards[key].keys(), key
        for name in file[key]:
            assert torch.equal(file[key][name], shards[key][name]), f"{key}/{name}"
    assert file["latents_val"]["masks"].any() and not file["latents_val"]["masks"].all()
    assert file["reconstruction"].equals(shards["reconstruction"])


def trained_tokenizer(root, paths):
    """The tokenizer the stage test trains on the file split (trained here when that test did not run)."""
    tokenizer = root / "file" / "tok"
    if not (tokenizer / "model.safetensors").is_file():
        _run("train-tokenizer", "--spec", json.dumps(TOKENIZER), "--train", paths["train"]["file"],
             "--teacher", root / "teacher", "--out", tokenizer)
    return tokenizer


def test_reconstruction_rfid_rows_use_the_fid_inception(stores, tmp_path):
    """--inception-weights adds rfid rows: the Fréchet distance of Inception pool3 features of the originals
    and of the posterior-mean reconstructions (recomputed here through the generation-metrics path)."""
    from diffusability.metrics.frechet import feature_statistics, frechet_distance
    from diffusability.evaluation.generation import extract_inception_outputs
    from diffusability.evaluation.inception import FIDInceptionV3
    from diffusability.tokenizers import load_tokenizer
    from diffusability.reconstruction.measure import reconstruct

    root, paths = stores
    torch.manual_seed(0)
    state = {k: v for k, v in FIDInceptionV3().state_dict().items() if k != "softmax_weight"}
    save_tensors(tmp_path / "inception.safetensors", state)
    tokenizer = trained_tokenizer(root, paths)
    _run("reconstruction", "--tokenizer", tokenizer, "--data", paths["val"]["shards"], "--feature-net",
         root / "teacher", "--inception-weights", tmp_path / "inception.safetensors", "--spec",
         json.dumps({"batch_size": 4}), "--out", tmp_path / "rec.parquet")
    rows = read_parquet(tmp_path / "rec.parquet").set_index("metric")
    assert {"psnr", "ssim", "rfd", "rfid", "rfid_untrained"} <= set(rows.index)
    assert rows.loc["rfid", "direction"] == "lower" and rows.loc["rfid", "n"] == 11

    images = open_image_split(paths["val"]["file"]).images
    net = FIDInceptionV3()
    net.load_state_dict(state, strict=False)
    net.eval()
    originals = extract_inception_outputs(net, images, 4)["pool3"]
    rebuilt = extract_inception_outputs(net, reconstruct(load_tokenizer(tokenizer), images, 4).numpy(), 4)["pool3"]
    expected = frechet_distance(*feature_statistics(originals), *feature_statistics(rebuilt))
    assert rows.loc["rfid", "value"] == pytest.approx(float(expected), rel=1e-6)


def test_reconstruction_lpips_rows_average_the_per_image_distance(stores, tmp_path):
    """--lpips-weights adds lpips rows: the mean LPIPS-VGG distance of each image to its reconstruction."""
    from diffusability.imaging import to_model_input
    from diffusability.tokenizers import load_tokenizer
    from diffusability.reconstruction.measure import reconstruct
    from diffusability.tokenizers.lpips import LPIPSVGG, load_lpips_vgg

    root, paths = stores
    torch.manual_seed(1)
    vgg = {f"features.{k}": v for k, v in LPIPSVGG().features.state_dict().items()}
    heads = {f"lin{level}.weight": torch.rand(1, c, 1, 1) for level, c in enumerate((64, 128, 256, 512, 512))}
    save_tensors(tmp_path / "lpips.safetensors", {**vgg, **heads})
    tokenizer = trained_tokenizer(root, paths)
    _run("reconstruction", "--tokenizer", tokenizer, "--data", paths["val"]["file"], "--feature-net",
         root / "teacher", "--lpips-weights", tmp_path / "lpips.safetensors", "--spec",
         json.dumps({"batch_size": 4}), "--out", tmp_path / "rec.parquet")
    rows = read_parquet(tmp_path / "rec.parquet").set_index("metric")
    images = torch.as_tensor(open_image_split(paths["val"]["file"]).images)
    rebuilt = reconstruct(load_tokenizer(tokenizer), images, 4)
    with torch.no_grad():
        expected = load_lpips_vgg(tmp_path / "lpips.safetensors")(to_model_input(images), to_model_input(rebuilt))
    assert rows.loc["lpips", "value"] == pytest.approx(float(expected.double().mean()), rel=1e-5)
    assert rows.loc["lpips", "direction"] == "lower" and rows.loc["lpips_untrained", "value"] > 0
