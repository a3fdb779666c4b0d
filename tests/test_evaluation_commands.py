"""The evaluation commands end to end on tiny generated splits, and the generation rows."""

import json

import numpy as np
import pytest

from diffusability.cli import main
from diffusability.data.shapes import generate_shapes
from diffusability.evaluation import inception_score
from diffusability.metrics.frechet import feature_statistics
from diffusability.evaluation.generation import generation_rows
from diffusability.io import load_arrays, read_parquet, save_npz, save_tensors

TEACHER_SPEC = {"seed": 0, "width": 8, "steps": 40, "batch_size": 64, "lr": 5e-3, "warmup_steps": 5}


def test_generation_rows_closed_forms():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((40, 5))
    mu, sigma = feature_statistics(features)
    logits = np.eye(4)[np.arange(40) % 4] * 50.0  # confident, 10 of each class
    labels = np.arange(40) % 4
    labels[:10] = (labels[:10] + 1) % 4  # the first 10 samples disagree with their label
    rows = {r["metric"]: r for r in generation_rows(features, logits, labels, mu, sigma, is_splits=1,
                                                    params={"feature_net": "x"})}
    assert rows["fd"]["value"] == pytest.approx(0.0, abs=1e-9) and rows["fd"]["direction"] == "lower"
    assert rows["is"]["value"] == pytest.approx(4.0, rel=1e-9) and rows["is"]["direction"] == "higher"
    assert rows["class_accuracy"]["value"] == pytest.approx(0.75)
    assert json.loads(rows["fd"]["params"]) == {"feature_net": "x", "is_splits": 1}
    assert {r["n"] for r in rows.values()} == {40}


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation_cli")
    for name, seed, n in (("train", 0, 256), ("val", 1, 100)):
        data = generate_shapes(n, 32, seed=seed, n_classes=4, constant_background=True)
        save_tensors(root / f"{name}.safetensors", data, metadata={"n_classes": "4", "image_size": "32"})
    assert main(["train-teacher", "--spec", json.dumps(TEACHER_SPEC), "--train", str(root / "train.safetensors"),
                 "--val", str(root / "val.safetensors"), "--out", str(root / "teacher")]) == 0
    return root


def test_train_teacher_writes_directory(splits):
    config = json.loads((splits / "teacher" / "config.json").read_text())
    assert config["num_classes"] == 4 and config["image_size"] == 32
    assert config["val_accuracy"] > config["chance_accuracy"]


def test_generation_metrics_of_the_reference_itself(splits):
    val = load_arrays(splits / "val.safetensors")
    save_npz(splits / "samples.npz", arr_0=val["images"], labels=val["labels"])
    out = splits / "rows.parquet"
    assert main(["generation-metrics", "--samples", str(splits / "samples.npz"), "--reference",
                 str(splits / "val.safetensors"), "--feature-net", str(splits / "teacher"),
                 "--spec", json.dumps({"batch_size": 32, "is_splits": 5}), "--out", str(out)]) == 0
    rows = read_parquet(out).set_index("metric")
    assert list(read_parquet(out).columns) == ["metric", "value", "direction", "params", "n"]
    assert rows.loc["fd", "value"] == pytest.approx(0.0, abs=1e-6)  # samples == reference
    config = json.loads((splits / "teacher" / "config.json").read_text())
    assert rows.loc["class_accuracy", "value"] == pytest.approx(config["val_accuracy"])
    assert 1.0 <= rows.loc["is", "value"] <= 4.0
    assert (rows["n"] == 100).all()
    assert rows.loc["precision", "value"] == 1.0 and rows.loc["recall", "value"] == 1.0

    # Cached reference statistics give the same FD; shuffled samples give a positive FD.
    stats = splits / "stats.npz"
    assert main(["reference-stats", "--images", str(splits / "val.safetensors"), "--feature-net",
                 str(splits / "teacher"), "--out", str(stats)]) == 0
    assert set(load_arrays(stats)) >= {"mu", "sigma"}
    noise = np.random.default_rng(0).integers(0, 256, val["images"].shape, dtype=np.uint8)
    save_npz(splits / "noise.npz", arr_0=noise, labels=val["labels"])
    out2 = splits / "rows2.parquet"
    assert main(["generation-metrics", "--samples", str(splits / "noise.npz"), "--reference",
                 str(splits / "val.safetensors"), "--reference-stats", str(stats), "--feature-net",
                 str(splits / "teacher"), "--spec", json.dumps({"is_splits": 5}), "--out", str(out2)]) == 0
    rows2 = read_parquet(out2).set_index("metric")
    assert rows2.loc["fd", "value"] > 1e-3
    assert "precision" not in rows2.index  # cached statistics carry no features for precision/recall


def test_generation_metrics_errors_exit_2(splits, capsys):
    bad = splits / "bad.npz"
    save_npz(bad, arr_0=np.zeros((10, 16, 16, 3), np.uint8), labels=np.zeros(10, np.int64))
    common = ["--reference", str(splits / "val.safetensors"), "--feature-net", str(splits / "teacher"),
              "--out", str(splits / "never.parquet")]
    assert main(["generation-metrics", "--samples", str(bad), "--spec", "{}"] + common) == 2
    assert "feature net expects 32×32" in capsys.readouterr().err
    assert main(["generation-metrics", "--samples", str(bad), "--spec", '{"batch": 3}'] + common) == 2
    assert "unknown key" in capsys.readouterr().err
    assert not (splits / "never.parquet").exists()
