"""``diffusability prepare-data`` end to end on the shapes source, and spec validation."""

import json

import numpy as np
import pytest
from safetensors import safe_open

from diffusability.cli import main
from diffusability.data.commands import split_seed
from diffusability.data.shapes import generate_shapes
from diffusability.data.spec import DataSpec, parse_data_spec
from diffusability.errors import DiffusabilityError
from diffusability.io import load_arrays


def run(tmp_path, spec):
    train, val = tmp_path / "split" / "train.safetensors", tmp_path / "split" / "val.safetensors"
    code = main(["prepare-data", "--spec", json.dumps(spec), "--out-train", str(train), "--out-val", str(val)])
    return code, train, val


def test_prepare_data_shapes_end_to_end(tmp_path):
    spec = {"seed": 5, "source": "shapes", "image_size": 32, "n_train": 24, "n_val": 16, "n_classes": 8}
    code, train, val = run(tmp_path, spec)
    assert code == 0
    a, b = load_arrays(train), load_arrays(val)
    assert a["images"].shape == (24, 32, 32, 3) and a["images"].dtype == np.uint8
    assert a["labels"].dtype == np.int64 and a["masks"].dtype == np.bool_
    assert b["images"].shape == (16, 32, 32, 3)
    assert np.bincount(a["labels"], minlength=8).tolist() == [3] * 8
    with safe_open(str(train), framework="np") as handle:
        meta = handle.metadata()
    assert meta["n_classes"] == "8" and meta["image_size"] == "32" and meta["split"] == "train"
    # The files are exactly the generator's streams for the derived seeds...
    expected = generate_shapes(24, 32, split_seed(5, "train"), 8)
    np.testing.assert_array_equal(a["images"], expected["images"])
    np.testing.assert_array_equal(a["masks"], expected["masks"])
    # ...and train and val share no image.
    train_bytes = {img.tobytes() for img in a["images"]}
    assert not any(img.tobytes() in train_bytes for img in b["images"])
    # Re-running gives identical tensors (the safetensors header's key order may vary).
    code, train2, _ = run(tmp_path / "again", spec)
    again = load_arrays(train2)
    for key in ("images", "labels", "masks"):
        assert again[key].tobytes() == a[key].tobytes()


def test_prepare_data_rejects_unknown_key(tmp_path, capsys):
    code, train, _ = run(tmp_path, {"seed": 1, "n_trian": 3})
    assert code == 2 and not train.exists()
    assert "n_trian" in capsys.readouterr().err


@pytest.mark.parametrize("spec, fragment", [
    ({"source": "shapes"}, "'seed'"),
    ({"seed": 1, "source": "cifar"}, "source"),
    ({"seed": 1, "image_size": 8}, "image_size"),
    ({"seed": 1, "n_val": -1}, "n_val"),
    ({"seed": 1, "n_classes": 2.5}, "n_classes"),
    ({"seed": 1, "imagenet": {"train_dir": "x", "colour": 1}}, "colour"),
    ({"seed": 1, "source": "imagenet"}, "train_dir"),
    ({"seed": 1, "imagenet": {"max_bad_fraction": 2}}, "max_bad_fraction"),
])
def test_spec_errors_name_the_key(spec, fragment):
    with pytest.raises(DiffusabilityError, match=fragment):
        parse_data_spec(spec)


def test_spec_defaults():
    spec = parse_data_spec({"seed": 3, "imagenet": {"train_dir": "t", "val_dir": "v"}})
    assert isinstance(spec, DataSpec) and spec.source == "shapes" and spec.imagenet.max_bad_fraction == 0.001
    assert spec.imagenet.masks_dir is None and spec.imagenet.train_dir == "t"
