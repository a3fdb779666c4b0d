"""ImageNet as an on-disk Hugging Face dataset: the manifest and the shards hold exactly what the image-folder
route gives for the same files (crops, labels, ImageNet-S masks joined by file stem), and the clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffusability.cli import main
from diffusability.data.hf_dataset import image_stem, is_hf_dataset, parse_row_reference
from diffusability.data.shards import ShardedImages, build_manifest, select_rows, verify_manifest, write_shards
from diffusability.errors import DiffusabilityError

WNIDS = ["n01440764", "n01443537"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same val images as a <wnid>/ folder tree and as a save_to_disk dataset, plus ImageNet-S masks."""
    import datasets

    root = tmp_path_factory.mktemp("hf")
    rng = np.random.default_rng(0)
    records = {"image": [], "label": []}
    index = 0
    for label, wnid in enumerate(WNIDS):
        (root / "val" / wnid).mkdir(parents=True)
        (root / "masks" / wnid).mkdir(parents=True)
        for k in range(3):
            index += 1
            name = f"ILSVRC2012_val_{index:08d}.JPEG"
            height, width = int(rng.integers(20, 40)), int(rng.integers(20, 40))
            path = root / "val" / wnid / name
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=95)
            records["image"].append({"bytes": path.read_bytes(), "path": name})
            records["label"].append(label)
            if k < 2:  # one image per class without a mask
                ids = np.zeros((height, width), dtype=np.int64)
                ids[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = label + 1
                rgb = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], axis=-1).astype(np.uint8)
                Image.fromarray(rgb).save(root / "masks" / wnid / f"{path.stem}.png")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=WNIDS)})
    datasets.Dataset.from_dict(records, features=features).save_to_disk(str(root / "hf_val"))
    (root / "categories.txt").write_text("\n".join(WNIDS) + "\n")
    return root


def test_manifest_lists_dataset_rows_like_the_folder(sources, tmp_path):
    assert is_hf_dataset(sources / "hf_val") and not is_hf_dataset(sources / "val")
    rows = build_manifest(sources / "hf_val", sources / "val")
    folder = build_manifest(sources / "val", sources / "val", cache_dir=str(tmp_path / "cache"))
    assert list(rows["label"]) == list(folder["label"]) and list(rows["wnid"]) == list(folder["wnid"])
    assert [image_stem(p) for p in rows["path"]] == [image_stem(p) for p in folder["path"]]
    assert list(rows["sha256"]) == list(folder["sha256"])  # the dataset holds the files' own bytes
    root, row, name = parse_row_reference(rows["path"][4])
    assert (root, row, name) == (str(sources / "hf_val"), 4, "ILSVRC2012_val_00000005.JPEG")
    assert verify_manifest(rows) == []


def test_shards_of_the_dataset_equal_those_of_the_folder(sources, tmp_path):
    folder_manifest = build_manifest(sources / "val", sources / "val", cache_dir=str(tmp_path / "cache"))
    stems = {p.stem for p in (sources / "masks").glob("*/*.png")}
    for name, manifest in (("folder", folder_manifest), ("dataset", build_manifest(sources / "hf_val", None))):
        chosen = select_rows(manifest, n_classes=2, keep_stems=stems)
        write_shards(chosen, tmp_path / name, image_size=16, shard_size=3, masks_dir=str(sources / "masks"),
                     mask_categories=str(sources / "categories.txt"), n_classes=2)
    a, b = ShardedImages(tmp_path / "folder"), ShardedImages(tmp_path / "dataset")
    assert len(a) == len(b) == 4
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(np.asarray(a.masks), np.asarray(b.masks))
    np.testing.assert_array_equal(b.mask_label, b.labels)
    assert np.asarray(b.masks).any()


def test_commands_and_errors(sources, tmp_path):
    out = tmp_path / "val.manifest.parquet"
    assert main(["imagenet-manifest", "--image-root", str(sources / "hf_val"), "--train-dir", str(sources / "hf_val"),
                 "--out", str(out)]) == 0
    spec = {"image_size": 16, "shard_size": 4, "n_classes": 2, "split": "val"}
    assert main(["imagenet-shards", "--manifest", str(out), "--out-dir", str(tmp_path / "shards"),
                 "--spec", json.dumps(spec)]) == 0
    assert len(ShardedImages(tmp_path / "shards")) == 6

    from diffusability.data.imagenet import prepare_imagenet_splits
    from diffusability.data.spec import parse_data_spec

    memory = parse_data_spec({"seed": 0, "source": "imagenet", "image_size": 16, "n_train": 0, "n_val": 0,
                              "n_classes": 2, "imagenet": {"train_dir": str(sources / "hf_val"),
                                                           "val_dir": str(sources / "hf_val")}})
    with pytest.raises(DiffusabilityError, match="storage: shards"):
        prepare_imagenet_splits(memory)
