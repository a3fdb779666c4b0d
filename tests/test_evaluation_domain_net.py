"""The domain classifier: output shapes, the saved directory, the spec, and that it learns."""

import json

import numpy as np
import pytest
import torch

from diffusability.data.shapes import generate_shapes
from diffusability.errors import DiffusabilityError
from diffusability.teacher.domain_net import (DomainClassifier, DomainNetSpec, classification_accuracy,
                                                 load_domain_classifier, train_domain_classifier)
from diffusability.io import read_parquet


@pytest.mark.parametrize("image_size", [32, 64])
def test_output_shapes(image_size):
    torch.manual_seed(0)
    model = DomainClassifier(num_classes=5, image_size=image_size, width=16)
    x = torch.rand(3, 3, image_size, image_size) * 2 - 1
    assert model.logits(x).shape == (3, 5)
    assert model.features(x).shape == (3, model.feature_dim) == (3, 64)
    assert [tuple(m.shape) for m in model.feature_pyramid(x)] == [(3, 16, 16, 16), (3, 32, 8, 8), (3, 64, 4, 4)]
    # The most semantic level with at least the grid's resolution: 4×4 → 4w, 8×8 → 2w, 16×16 → w.
    assert model.feature_map(x, (2, 2)).shape == (3, 64, 2, 2) and model.feature_map_channels((2, 2)) == 64
    assert model.feature_map(x, (8, 8)).shape == (3, 32, 8, 8) and model.feature_map_channels((8, 8)) == 32
    assert model.feature_map(x, (16, 16)).shape == (3, 16, 16, 16)
    assert model.feature_map(x, (32, 32)).shape == (3, 16, 32, 32)
    torch.testing.assert_close(model.feature_map(x, (8, 8)), model.feature_pyramid(x)[1])
    # Pooling the 4×4 map to 1×1 is the global average, i.e. the features.
    torch.testing.assert_close(model.feature_map(x, (1, 1)).flatten(1), model.features(x))


def test_rejects_wrong_input_shape_and_size():
    model = DomainClassifier(num_classes=3, image_size=32, width=8)
    with pytest.raises(DiffusabilityError, match=r"\(N, 3, 32, 32\)"):
        model.logits(torch.zeros(2, 3, 64, 64))
    with pytest.raises(DiffusabilityError, match="multiple of 16"):
        DomainClassifier(num_classes=3, image_size=40)


def test_spec_defaults_and_unknown_key():
    spec = DomainNetSpec.from_dict({})
    assert (spec.steps, spec.batch_size, spec.lr, spec.width) == (300, 128, 2e-3, 32)
    with pytest.raises(DiffusabilityError, match="unknown key.*'stpes'"):
        DomainNetSpec.from_dict({"stpes": 10})
    with pytest.raises(DiffusabilityError, match="batch_size"):
        DomainNetSpec.from_dict({"batch_size": 0})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny classifier trained on easy shapes (plain background, 4 classes) in a few seconds."""
    data = generate_shapes(384, 32, seed=0, n_classes=4, constant_background=True)
    val = generate_shapes(128, 32, seed=1, n_classes=4, constant_background=True)
    out = tmp_path_factory.mktemp("domain_net")
    spec = {"seed": 3, "width": 8, "steps": 60, "batch_size": 64, "lr": 5e-3, "warmup_steps": 5}
    config = train_domain_classifier(data["images"], data["labels"], spec, out, val["images"], val["labels"])
    return out, config, val


def test_training_learns_and_writes_the_directory(trained):
    out, config, val = trained
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "train_log.parquet"}
    saved = json.loads((out / "config.json").read_text())
    assert saved["val_accuracy"] == pytest.approx(config["val_accuracy"])
    assert saved["val_accuracy"] > 0.5  # chance is 0.25
    log = read_parquet(out / "train_log.parquet")
    assert list(log["step"]) == list(range(60))
    assert log["loss"].iloc[-10:].mean() < log["loss"].iloc[:5].mean()


def test_loaded_model_is_frozen_and_reproduces_the_accuracy(trained):
    out, config, val = trained
    model = load_domain_classifier(out)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    # Recomputed independently from the argmax of the loaded network.
    assert classification_accuracy(model, val["images"], val["labels"]) == pytest.approx(config["val_accuracy"])


def test_training_is_reproducible(trained, tmp_path):
    out, config, _ = trained
    data = generate_shapes(384, 32, seed=0, n_classes=4, constant_background=True)
    spec = {"seed": 3, "width": 8, "steps": 3, "batch_size": 64, "lr": 5e-3, "warmup_steps": 5}
    train_domain_classifier(data["images"], data["labels"], spec, tmp_path / "a")
    train_domain_classifier(data["images"], data["labels"], spec, tmp_path / "b")
    a, b = load_domain_classifier(tmp_path / "a"), load_domain_classifier(tmp_path / "b")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_features_have_full_rank_covariance(trained):
    # FD needs a non-singular covariance: SiLU features do not die like ReLU channels.
    out, _, _ = trained
    model = load_domain_classifier(out)
    images = torch.rand(200, 3, 32, 32) * 2 - 1
    features = model.features(images).double().numpy()
    eigenvalues = np.linalg.eigvalsh(np.cov(features, rowvar=False))
    assert eigenvalues.min() > 1e-10 * eigenvalues.max()


def test_load_errors_name_the_directory(tmp_path):
    with pytest.raises(DiffusabilityError, match="not found"):
        load_domain_classifier(tmp_path / "missing")
