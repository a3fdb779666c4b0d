"""ImageNet manifest and memory-mappable shards: content, parallel = serial, resume, bad files."""

import json

import numpy as np
import pytest
from PIL import Image

from diffusability.cli import main
from diffusability.data.imagenet import load_center_cropped
from diffusability.data.shards import (ShardedImages, build_manifest, read_manifest, shard_names,
                                       verify_manifest, write_shards)
from diffusability.errors import DiffusabilityError
from diffusability.io import file_sha256

WNIDS = ["n02085620", "n02085782"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(1)
    for wnid in WNIDS:
        (root / "train" / wnid).mkdir(parents=True)
        for k in range(5):
            w, h = rng.integers(20, 60, size=2)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / "train" / wnid / f"{wnid}_{k}.JPEG")
    good = (root / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG").read_bytes()
    (root / "train" / WNIDS[1] / f"{WNIDS[1]}_9.JPEG").write_bytes(good[:40])  # truncated
    return root


@pytest.fixture(scope="module")
def manifest(tree, tmp_path_factory):
    return build_manifest(tree / "train", tree / "train", cache_dir=str(tmp_path_factory.mktemp("hf")))


def test_manifest_rows(manifest, tree):
    assert len(manifest) == 11 and list(manifest["path"]) == sorted(manifest["path"])
    for row in manifest.itertuples():
        assert row.label == WNIDS.index(row.wnid)
        assert row.sha256 == file_sha256(row.path)
    assert verify_manifest(manifest) == []


def test_shards_content_resume_and_parallel(manifest, tmp_path):
    index = write_shards(manifest, tmp_path / "serial", image_size=16, shard_size=4, max_bad_fraction=0.1)
    assert index["n_shards"] == 3 and index["n_images"] == 10 and len(index["bad"]) == 1
    data = ShardedImages(tmp_path / "serial")
    assert len(data) == 10
    good = manifest[~manifest["path"].str.endswith("_9.JPEG")]
    np.testing.assert_array_equal(data.labels, good["label"].to_numpy())
    for i, path in enumerate(good["path"]):
        np.testing.assert_array_equal(data[i], load_center_cropped(path, 16))
    assert data.batch([0, 9]).shape == (2, 16, 16, 3)

    # Two worker processes write the same bytes.
    write_shards(manifest, tmp_path / "parallel", image_size=16, shard_size=4, workers=2, max_bad_fraction=0.1)
    for k in range(3):
        a, b = shard_names(tmp_path / "serial", k), shard_names(tmp_path / "parallel", k)
        for kind in ("images", "labels", "rows"):
            assert a[kind].read_bytes() == b[kind].read_bytes()

    # Resume: complete shards are not rewritten; a shard without its marker is redone.
    names = shard_names(tmp_path / "serial", 1)
    names["shard"].unlink()
    names["images"].write_bytes(b"torn")
    before = shard_names(tmp_path / "serial", 0)["images"].stat().st_mtime_ns
    write_shards(manifest, tmp_path / "serial", image_size=16, shard_size=4, max_bad_fraction=0.1)
    assert shard_names(tmp_path / "serial", 0)["images"].stat().st_mtime_ns == before
    assert names["images"].read_bytes() == shard_names(tmp_path / "parallel", 1)["images"].read_bytes()


def test_bad_fraction_enforced(manifest, tmp_path):
    with pytest.raises(DiffusabilityError, match="_9.JPEG"):
        write_shards(manifest, tmp_path / "strict", image_size=16, shard_size=4, max_bad_fraction=0.05)


def test_commands_end_to_end(tree, tmp_path):
    out = tmp_path / "manifest.parquet"
    assert main(["imagenet-manifest", "--image-root", str(tree / "train"), "--train-dir", str(tree / "train"),
                 "--out", str(out), "--cache-dir", str(tmp_path / "hf")]) == 0
    assert len(read_manifest(out)) == 11
    spec = {"image_size": 8, "shard_size": 5, "max_bad_fraction": 0.2}
    assert main(["imagenet-shards", "--manifest", str(out), "--out-dir", str(tmp_path / "s"),
                 "--spec", json.dumps(spec)]) == 0
    assert len(ShardedImages(tmp_path / "s")) == 10
    assert main(["imagenet-shards", "--manifest", str(out), "--out-dir", str(tmp_path / "s"),
                 "--spec", json.dumps({"shard_sise": 3})]) == 2
