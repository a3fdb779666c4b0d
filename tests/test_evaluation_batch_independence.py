"""gFID, sFID, IS, precision/recall and rFID (FID Inception), and FD/IS/class accuracy (domain net), do not
depend on the feature-extraction batch size: each is computed at batch sizes 1, 7 and 64 and compared.

Tolerance of the generation metrics (gFID, sFID, IS, P/R; domain-net FD, IS, accuracy): relative 1e-6
(absolute 1e-9 near 0); cached float32 features and their statistics to 1e-5 of their scale. Measured on this
CPU: the FID Inception's features are bitwise identical across batch sizes; only the float32 matmul of the
1008-way logits differs (about 1e-6 absolute), which moves IS by about 2e-10 relative; the domain net's
features differ by float32 round-off (about 1e-7 relative) and its metrics by less than 1e-7.

Reconstruction metrics (rFID, rFD, PSNR, SSIM): the tokenizer's float32 decoder is not bitwise independent of
how many images share a call (3 of 24,576 uint8 values moved by one level between batch size 1 and 7 before
the fix, moving rFID by 4e-5 relative), so the reconstruction step decodes in fixed blocks aligned to the
image index (reconstruction/measure.py DECODE_BLOCK): the reconstructions are now identical bytes at every batch
size, and the metrics agree to REL_RECONSTRUCTION = 1e-6 (feature-extraction round-off only).

What a batch-dependent evaluator gets wrong, and what catches it here: the last partial batch dropped (8 images
at batch size 7 leave a last batch of 1), padding to full batches (batch size 64 exceeds every set), batch norm
in training mode or any per-batch statistic (an image's features would depend on its batch-mates: 1 vs 7 vs 64).
The stub-network test checks the batching itself exactly: every image once, in order, batches of
min(B, remaining) — also across the shard boundaries of memory-mapped ImageNet shards.

Processes: the evaluation runs in one process — generation-metrics, reference-stats and reconstruction have no
sharded extraction. Multi-process sampling writes byte-identical samples for 1 and 2 processes
(tests/test_sampling_sharded.py), so the metrics of a 2-process run are those of a 1-process run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from diffusability.cli import main
from diffusability.data.shards import ConcatenatedArrays
from diffusability.teacher.domain_net import DomainClassifier
from diffusability.evaluation.generation import extract_features_and_logits, extract_inception_outputs
from diffusability.evaluation.inception import FIDInceptionV3
from diffusability.io import load_arrays, read_parquet, save_npz, save_tensors, write_json
from test_evaluation_inception import blob_images, centred_softmax_weight

BATCH_SIZES = (1, 7, 64)
REL, ABS = 1e-6, 1e-9
REL_RECONSTRUCTION = 1e-6


def assert_same_rows(rows_by_batch: dict[int, dict[str, float]], rel: float = REL) -> None:
    """The metric rows of every batch size equal those of batch size 1 (same metrics, values to rel/ABS)."""
    first = rows_by_batch[BATCH_SIZES[0]]
    for batch_size, rows in rows_by_batch.items():
        assert set(rows) == set(first), batch_size
        for metric, value in rows.items():
            assert value == pytest.approx(first[metric], rel=rel, abs=ABS), (batch_size, metric, value, first[metric])


def assert_close_to_scale(actual, expected, rel: float = 1e-5) -> None:
    """Arrays equal to ``rel`` of the largest magnitude (float32 round-off; covariances have entries near 0)."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rel * float(np.abs(expected).max()))


def metric_values(path) -> dict[str, float]:
    table = read_parquet(path)
    return dict(zip(table["metric"], table["value"]))


# ----------------------------------------------------------------------------- the batching itself (stub nets)

class RecordingNet(torch.nn.Module):
    """Per-image outputs (a function of that image alone) and a record of every batch size it was called with."""

    def __init__(self):
        super().__init__()
        self.batches: list[int] = []

    # the FID Inception's interface (extract_inception_outputs, the rFID extractor)
    def preprocess(self, batch):
        return torch.as_tensor(batch).float()

    def forward_preprocessed(self, x):
        self.batches.append(len(x))
        flat = x.flatten(1)
        return {"pool3": flat[:, :4], "spatial": flat[:, 4:6], "logits": flat[:, :3] * 2}

    # the domain network's interface (extract_features_and_logits)
    def features_and_logits(self, x):
        self.batches.append(len(x))
        return x.flatten(1)[:, :4], x.flatten(1)[:, :3]


def expected_batches(n: int, batch_size: int) -> list[int]:
    return [min(batch_size, n - start) for start in range(0, n, batch_size)]


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("sharded", [False, True])
def test_every_image_once_in_order_no_padding(batch_size, sharded):
    images = np.random.default_rng(0).integers(0, 256, (8, 2, 2, 3), dtype=np.uint8)
    source = ConcatenatedArrays([images[:3], images[3:5], images[5:]], (2, 2, 3), np.uint8) if sharded else images
    flat = images.reshape(8, -1).astype(np.float64)

    net = RecordingNet()
    outputs = extract_inception_outputs(net, source, batch_size)
    np.testing.assert_array_equal(outputs["pool3"], flat[:, :4])
    np.testing.assert_array_equal(outputs["spatial"], flat[:, 4:6])
    np.testing.assert_array_equal(outputs["logits"], flat[:, :3] * 2)
    assert net.batches == expected_batches(8, batch_size)

    net = RecordingNet()
    features, logits = extract_features_and_logits(net, source, batch_size)
    unit = np.moveaxis(images, -1, 1).reshape(8, -1).astype(np.float32) / 127.5 - 1.0  # to_model_input, NCHW
    np.testing.assert_allclose(features, unit[:, :4], rtol=0, atol=1e-6)
    np.testing.assert_allclose(logits, unit[:, :3], rtol=0, atol=1e-6)
    assert net.batches == expected_batches(8, batch_size)

    from diffusability.reconstruction.measure import inception_features, original_features

    net = RecordingNet()
    originals = original_features({"rfid": inception_features(net)}, source, batch_size)["rfid"]
    np.testing.assert_array_equal(originals.numpy(), flat[:, :4])
    assert net.batches == expected_batches(8, batch_size)


# ----------------------------------------------------------------------------- the domain network (embedded default)

def test_domain_net_metrics_do_not_depend_on_batch_size(tmp_path):
    """fd, is, class_accuracy, precision, recall of `generation-metrics` with a domain network, and the
    features `reference-stats` caches, at batch sizes 1, 7, 64 (8 samples, 10 reference images)."""
    torch.manual_seed(0)
    net = DomainClassifier(4, 32, 8).eval()
    save_tensors(tmp_path / "net" / "model.safetensors", net.state_dict())
    write_json(tmp_path / "net" / "config.json", net.config())
    reference, samples = blob_images(10, seed=1), blob_images(8, seed=2)
    save_tensors(tmp_path / "val.safetensors", {"images": reference, "labels": np.arange(10, dtype=np.int64) % 4})
    save_npz(tmp_path / "samples.npz", arr_0=samples, labels=np.arange(8, dtype=np.int64) % 4)
    rows, cached = {}, {}
    for batch_size in BATCH_SIZES:
        out = tmp_path / f"rows_{batch_size}.parquet"
        assert main(["generation-metrics", "--samples", str(tmp_path / "samples.npz"), "--feature-net",
                     str(tmp_path / "net"), "--reference", str(tmp_path / "val.safetensors"), "--spec",
                     json.dumps({"batch_size": batch_size, "is_splits": 2}), "--out", str(out)]) == 0
        rows[batch_size] = metric_values(out)
        stats = tmp_path / f"stats_{batch_size}.npz"
        assert main(["reference-stats", "--images", str(tmp_path / "val.safetensors"), "--feature-net",
                     str(tmp_path / "net"), "--batch-size", str(batch_size), "--keep-features", "--out", str(stats)]) == 0
        cached[batch_size] = load_arrays(stats)
    assert set(rows[1]) == {"fd", "is", "class_accuracy", "precision", "recall"}
    assert_same_rows(rows)
    for batch_size in BATCH_SIZES:
        assert cached[batch_size]["features"].shape == (10, 32)
        for key in ("features", "mu", "sigma"):
            assert_close_to_scale(cached[batch_size][key], cached[1][key])


# ----------------------------------------------------------------------------- the FID Inception (random weights)

@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A kaiming-initialised FID Inception with a random 1008-way layer orthogonal to its common pool3
    direction (so IS is well above 1), as a weight file."""
    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    net = FIDInceptionV3().eval()
    with torch.no_grad():
        pool3 = net(torch.from_numpy(blob_images(1, seed=9)))["pool3"]
    # scale 3: this network's pool3 spread is about 10× smaller than the torch-fidelity one's (BN stats 0/1)
    state = {**net.state_dict(), "softmax_weight": centred_softmax_weight(pool3, 3.0, seed=1)}
    path = tmp_path_factory.mktemp("inception") / "random_inception.safetensors"
    save_tensors(path, state)
    return path


@pytest.mark.slow
def test_inception_generation_metrics_do_not_depend_on_batch_size(inception_weights, tmp_path):
    """gFID, sFID, IS, precision, recall of `generation-metrics --feature-net inception` over the statistics
    `reference-stats` cached at the same batch size: 8 samples, 4 reference images (P/R with k = 3 needs more
    than 3), batch sizes 1, 7, 64."""
    torch.set_flush_denormal(True)
    reference, samples = blob_images(4, seed=3), blob_images(8, seed=4)
    save_tensors(tmp_path / "val.safetensors", {"images": reference, "labels": np.zeros(4, np.int64)})
    save_npz(tmp_path / "samples.npz", arr_0=samples, labels=np.zeros(8, np.int64))
    inception = ["--feature-net", "inception", "--inception-weights", str(inception_weights)]
    rows, cached = {}, {}
    for batch_size in BATCH_SIZES:
        stats, out = tmp_path / f"stats_{batch_size}.npz", tmp_path / f"rows_{batch_size}.parquet"
        assert main(["reference-stats", "--images", str(tmp_path / "val.safetensors"), *inception,
                     "--batch-size", str(batch_size), "--keep-features", "--out", str(stats)]) == 0
        assert main(["generation-metrics", "--samples", str(tmp_path / "samples.npz"), "--reference-stats", str(stats),
                     *inception, "--spec", json.dumps({"batch_size": batch_size, "is_splits": 2}),
                     "--out", str(out)]) == 0
        rows[batch_size], cached[batch_size] = metric_values(out), load_arrays(stats)
    assert set(rows[1]) == {"fd", "sfid", "is", "precision", "recall"}
    assert rows[1]["is"] > 1.2 and rows[1]["fd"] > 0.1  # not the trivial values
    assert_same_rows(rows)
    for batch_size in BATCH_SIZES:
        assert cached[batch_size]["features"].shape == (4, 2048)
        for key in ("features", "mu", "sigma", "mu_s", "sigma_s"):
            assert_close_to_scale(cached[batch_size][key], cached[1][key])


@pytest.mark.slow
def test_rfid_does_not_depend_on_batch_size(inception_weights):
    """psnr, ssim, rFD (domain net) and rFID (FID Inception) of a tokenizer's reconstructions, computed by
    the reconstruction command's `reconstruction_metrics` (originals' features included) at batch sizes
    1, 7, 64 over 8 images, to REL_RECONSTRUCTION; and the reconstructions themselves, which differ only
    where the decoder's round-off crosses a uint8 level (see the module docstring)."""
    from diffusability.evaluation.inception import load_fid_inception
    from diffusability.reconstruction.measure import (domain_features, inception_features, reconstruct,
                                                      reconstruction_metrics)
    from diffusability.tokenizers.factory import initial_tokenizer

    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    domain = DomainClassifier(4, 32, 8).eval()
    inception = load_fid_inception(inception_weights)
    tokenizer = initial_tokenizer({}).eval()
    images = blob_images(8, seed=5)
    values = {}
    for batch_size in BATCH_SIZES:
        extractors = {"rfd": domain_features(domain), "rfid": inception_features(inception)}
        values[batch_size] = reconstruction_metrics(tokenizer, images, None, batch_size, extractors=extractors)
    assert set(values[1]) == {"psnr", "ssim", "rfd", "rfid"} and values[1]["rfid"] > 0.1
    assert_same_rows(values, rel=REL_RECONSTRUCTION)
    one = reconstruct(tokenizer, images, 1)
    for batch_size in BATCH_SIZES[1:]:  # decoded in fixed index-aligned blocks: identical bytes
        assert torch.equal(reconstruct(tokenizer, images, batch_size), one)
