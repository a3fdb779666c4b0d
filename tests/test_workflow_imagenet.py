"""The ImageNet / ImageNet-S / Inception wiring of the workflow: config keys and specs, clear failures
for missing folders and weights, and dry runs of config/imagenet.example.yaml against a tiny
ImageNet tree in the real layout (train/<wnid>/*.JPEG, val/<wnid>/ILSVRC2012_val_*.JPEG,
validation-segmentation/<wnid>/ILSVRC2012_val_*.png), in a working directory laid out like the repo."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import yaml
from PIL import Image

from diffusability.workflow import config as cfg
from diffusability.errors import DiffusabilityError
from workflow_helpers import expected_full_counts, planned_jobs, run_snakemake

WNIDS = ("n01440764", "n01443537", "n01484850")  # sorted: labels 0, 1, 2
PER_CLASS = 6


def make_imagenet_tree(root):
    """Tiny ImageNet + ImageNet-S copy: 6 train and 6 val JPEGs per class (odd sizes), a mask per val image."""
    rng = np.random.default_rng(0)
    index = 0
    for label, wnid in enumerate(WNIDS):
        for folder in ("train", "val", "validation-segmentation"):
            (root / folder / wnid).mkdir(parents=True)
        for k in range(PER_CLASS):
            height, width = int(rng.integers(30, 50)), int(rng.integers(30, 50))
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
                root / "train" / wnid / f"{wnid}_{k}.JPEG", quality=95)
            index += 1
            stem = f"ILSVRC2012_val_{index:08d}"
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
                root / "val" / wnid / f"{stem}.JPEG", quality=95)
            ids = np.zeros((height, width), dtype=np.int64)
            ids[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = label + 1  # object in the middle
            ids[0, :] = 1000  # an "ignore" border row
            rgb = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], axis=-1).astype(np.uint8)
            Image.fromarray(rgb).save(root / "validation-segmentation" / wnid / f"{stem}.png")
    return root


@pytest.fixture(scope="module")
def imagenet_tree(tmp_path_factory):
    root = make_imagenet_tree(tmp_path_factory.mktemp("imagenet"))
    (root / "fid_inception.safetensors").write_bytes(b"placeholder: dry runs never read it")
    (root / "VIRTUAL_imagenet256_labeled.npz").write_bytes(b"placeholder")
    return root


def example(repo) -> dict:
    return yaml.safe_load((repo / "config" / "imagenet.example.yaml").read_text())


def pointed_at(config: dict, tree, **generation) -> dict:
    """The example with its placeholder paths replaced by the tiny tree's."""
    config = copy.deepcopy(config)
    config["data"]["imagenet"].update(train_dir=str(tree / "train"), val_dir=str(tree / "val"),
                                      masks_dir=str(tree / "validation-segmentation"))
    config["generation"].update({"inception_weights": str(tree / "fid_inception.safetensors"),
                                 "reference_statistics": str(tree / "VIRTUAL_imagenet256_labeled.npz"), **generation})
    return config


def plan(exe, work, *targets, extra=()) -> dict[str, int]:
    """{rule: count} of a dry run towards ``targets`` (the default target when none)."""
    return planned_jobs(exe, work, *extra, targets=targets)


# ----------------------------------------------------------------------------- config keys and specs

def test_example_config_is_valid_and_sliced_per_command(repo):
    config = cfg.validate_config(example(repo))
    assert config["data"]["source"] == "imagenet"
    # prepare-data rejects the ingestion-only keys; they go to the manifest/shard rules instead.
    prepare = cfg.prepare_data_spec(config)
    assert set(prepare["imagenet"]) == {"train_dir", "val_dir", "masks_dir", "mask_categories", "max_bad_fraction"}
    assert cfg.shards_spec(config, "train") == {
        "image_size": 256, "shard_size": 1000, "workers": 16, "max_bad_fraction": 0.001, "split": "train", "seed": 0,
        "n_classes": 1000, "n_images": config["data"]["n_train"], "masks_dir": None, "mask_categories": None,
        "only_masked": False}
    assert cfg.generation_metrics_spec(config) == {"batch_size": 250, "is_splits": 10, "pr_k": 3}
    reference = cfg.reference_spec(config)
    assert reference["feature_network"] == "inception"
    assert reference["reference_statistics"].endswith("VIRTUAL_imagenet256_labeled.npz")
    assert re.fullmatch(r"[0-9a-f]{64}", reference["inception_sha256"])
    assert cfg.reconstruction_spec(config) == {"batch_size": 250, "is_splits": 10}


def test_default_config_specs_do_not_change(repo):
    """The embedded default keeps its job params: no Inception key is written into it, prepare-data gets
    the same spec, and the reconstruction step still gets only the keys it accepts."""
    config = cfg.validate_config(yaml.safe_load((repo / "config" / "config.yaml").read_text()))
    assert cfg.generation_spec(config) == {"batch_size": 256, "is_splits": 10}
    assert cfg.prepare_data_spec(config) == cfg.data_spec(config)
    assert cfg.reference_spec(config)["feature_network"] == "domain"
    assert cfg.generation_metrics_spec(config)["pr_k"] == 3
    with pytest.raises(DiffusabilityError, match="data.source"):
        cfg.imagenet_spec(config)
    cfg.check_imagenet_paths(config)  # shapes: nothing to check
    cfg.check_generation_paths(config)


@pytest.mark.parametrize("generation, key, expected", [
    ({"feature_network": "inception"}, "generation", "inception_weights"),
    ({"feature_network": "inception", "inception_weights": None}, "generation.inception_weights", "string"),
    ({"feature_network": "clip"}, "generation.feature_network", "domain, inception"),
    ({"inception_sha256": "abc"}, "generation.inception_sha256", "does not match"),
    ({"pr_k": 0}, "generation.pr_k", "minimum"),
])
def test_bad_generation_keys_are_named(repo, generation, key, expected):
    config = example(repo)
    config["generation"] = generation
    with pytest.raises(DiffusabilityError) as info:
        cfg.validate_config(config)
    assert key in str(info.value) and expected in str(info.value)


def test_unknown_imagenet_key_is_named(repo):
    config = example(repo)
    config["data"]["imagenet"]["shards"] = 10
    with pytest.raises(DiffusabilityError, match=r"'shards'.*data.imagenet"):
        cfg.validate_config(config)


# ----------------------------------------------------------------------------- dry runs

def test_missing_folders_warn_in_a_dry_run_and_stop_a_real_run_with_the_key(repo, snakemake_exe, workdir_factory):
    """A dry run shows the DAG of a study whose data is not there yet (warning, naming the keys); a real
    run stops before any job, naming them."""
    work = workdir_factory(example(repo), name="imagenet_missing")
    for args, status in ((("-n",), 0), ((), 1)):
        result = run_snakemake(snakemake_exe, work, *args, "--cores", "1", timeout=300)
        output = result.stdout + result.stderr
        assert (result.returncode == 0) == (status == 0), output[-2000:]
        assert "data.imagenet.train_dir: /path/to/imagenet/train is not a directory" in output
        assert "data.imagenet.masks_dir" in output
        assert not (work / "results").exists()


def test_missing_weights_stop_a_real_run_with_the_key(repo, snakemake_exe, workdir_factory, imagenet_tree, tmp_path):
    config = pointed_at(example(repo), imagenet_tree, inception_weights=str(tmp_path / "absent.safetensors"))
    result = run_snakemake(snakemake_exe, workdir_factory(config, name="weights_missing"), "--cores", "1",
                           timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "generation.inception_weights:" in output and "absent.safetensors not found" in output


def test_example_dry_run_on_a_tiny_tree(repo, snakemake_exe, workdir_factory, imagenet_tree):
    """The whole study DAG: every stage once per entity, plus two manifests and one reference_stats job
    (the ADM batch's statistics adopted, its images' features cached for precision/recall)."""
    config = pointed_at(example(repo), imagenet_tree)
    work = workdir_factory(config, name="imagenet_example")
    expected = {**expected_full_counts(config), "imagenet_manifest": 2, "reference_stats": 1}
    assert planned_jobs(snakemake_exe, work) == expected


def test_example_as_configfile_replacing_the_default(repo, snakemake_exe, workdir_factory, imagenet_tree):
    """`--configfile config/imagenet.example.yaml --replace-workflow-config`, as the example's header says."""
    default = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    work = workdir_factory(default, name="imagenet_configfile")
    config = pointed_at(example(repo), imagenet_tree)
    (work / "config" / "imagenet.example.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    counts = plan(snakemake_exe, work, extra=("--configfile", "config/imagenet.example.yaml",
                                              "--replace-workflow-config"))
    assert counts["train_tokenizer"] == len(config["tokenizers"]) == 3  # not merged with the demo's six
    assert counts["imagenet_manifest"] == 2 and counts["reference_stats"] == 1


def test_shard_storage_replaces_prepare_data(repo, snakemake_exe, workdir_factory, imagenet_tree):
    """storage: shards → the stages read the manifests' shards (two imagenet_shards jobs) and
    prepare_data never runs; every other stage keeps its count."""
    config = pointed_at(example(repo), imagenet_tree, reference_statistics=None)
    config["data"]["imagenet"]["storage"] = "shards"
    work = workdir_factory(config, name="imagenet_shards_storage")
    expected = {**expected_full_counts(config), "imagenet_manifest": 2, "imagenet_shards": 2, "reference_stats": 1}
    expected.pop("prepare_data")
    assert planned_jobs(snakemake_exe, work) == expected
    assert plan(snakemake_exe, work, "results/evaluation/reference_stats.npz") == {
        "imagenet_manifest": 1, "imagenet_shards": 1, "reference_stats": 1}


def test_reconstruction_measures_rfid_with_the_fid_inception(repo, snakemake_exe, workdir_factory, imagenet_tree):
    """With generation.feature_network: inception the reconstruction job reads the Inception weights and
    gets --inception-weights (rFID rows), with generation.lpips_weights --lpips-weights (LPIPS rows); the
    shard storage hands it the val shards."""
    config = pointed_at(example(repo), imagenet_tree)
    config["data"]["imagenet"]["storage"] = "shards"
    (imagenet_tree / "lpips_vgg.safetensors").write_bytes(b"placeholder: a dry run never reads it")
    config["generation"]["lpips_weights"] = str(imagenet_tree / "lpips_vgg.safetensors")
    work = workdir_factory(config, name="imagenet_rfid")
    tok = sorted(config["tokenizers"])[0]
    result = run_snakemake(snakemake_exe, work, f"results/reconstruction/{tok}.parquet", "-n", "-p", "--cores", "1",
                           timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    command = next(line for line in output.splitlines() if " reconstruction --tokenizer" in line)
    assert f"--inception-weights {imagenet_tree / 'fid_inception.safetensors'}" in command
    assert "--data results/data/imagenet/shards/val/index.json" in command
    assert f"--lpips-weights {imagenet_tree / 'lpips_vgg.safetensors'}" in command


def test_shards_spec_selects_like_prepare_data(repo, imagenet_tree):
    config = cfg.validate_config(pointed_at(example(repo), imagenet_tree))
    train, val = cfg.shards_spec(config, "train"), cfg.shards_spec(config, "val")
    assert train["masks_dir"] is None and not train["only_masked"] and train["n_images"] == config["data"]["n_train"]
    assert val["only_masked"] and val["masks_dir"] == str(imagenet_tree / "validation-segmentation")
    assert train["seed"] == val["seed"] == config["seed"] and train["n_classes"] == config["data"]["n_classes"]


def test_own_reference_statistics_come_from_the_val_split(repo, snakemake_exe, workdir_factory, imagenet_tree):
    """reference_statistics: null → reference_stats reads the val split, which prepare_data builds from
    the manifests (not the raw tree)."""
    config = pointed_at(example(repo), imagenet_tree, reference_statistics=None)
    work = workdir_factory(config, name="imagenet_own_reference")
    assert plan(snakemake_exe, work, "results/evaluation/reference_stats.npz") == {
        "imagenet_manifest": 2, "prepare_data": 1, "reference_stats": 1}


# ----------------------------------------------------------------------------- a real run of the data rules

@pytest.mark.slow
def test_manifests_splits_and_shards_run(repo, snakemake_exe, workdir_factory, imagenet_tree):
    """The data rules for real on the tiny tree: manifests (labels from the sorted wnids, SHA-256),
    the train/val splits with ImageNet-S masks, and the shards of both splits."""
    from diffusability.data.shards import ShardedImages, read_manifest
    from diffusability.io import file_sha256, load_arrays

    config = pointed_at(example(repo), imagenet_tree)
    config["data"].update(image_size=32, n_train=16, n_val=16, n_classes=3)
    categories = imagenet_tree / "ImageNetS_categories_im3.txt"
    categories.write_text("\n".join(WNIDS) + "\n")
    config["data"]["imagenet"].update(workers=1, shard_size=7, mask_categories=str(categories))
    work = workdir_factory(config, name="imagenet_run")
    result = run_snakemake(snakemake_exe, work, "results/data/train.safetensors", "imagenet_shards_all",
                           "--cores", "2", timeout=600)
    if result.returncode != 0:
        logs = "\n".join(p.read_text() for p in sorted((work / "logs").rglob("*.log")))
        pytest.fail((result.stdout + result.stderr)[-3000:] + logs[-5000:])

    manifest = read_manifest(work / "results/data/imagenet/val.manifest.parquet")
    assert len(manifest) == len(WNIDS) * PER_CLASS
    assert (manifest["label"] == manifest["wnid"].map({w: k for k, w in enumerate(WNIDS)})).all()
    first = manifest.iloc[0]
    assert first["sha256"] == file_sha256(first["path"])

    train, val = (load_arrays(work / f"results/data/{s}.safetensors") for s in ("train", "val"))
    assert train["images"].shape == (16, 32, 32, 3) and val["images"].shape == (16, 32, 32, 3)
    assert set(np.unique(val["labels"])) <= {0, 1, 2}
    assert val["masks"].any() and not val["masks"].all()  # the object in the middle, not the border
    assert not val["mask_valid"].all()  # "ignore" pixels (id 1000) are marked not valid

    # The ImageNet-S ids map back to the folder labels through the category list.
    np.testing.assert_array_equal(val["mask_label"], val["labels"])

    # Both storages hold the same selection: the shards equal prepare_data's files array for array.
    for split, arrays in (("train", train), ("val", val)):
        shards = ShardedImages(work / f"results/data/imagenet/shards/{split}")
        assert len(shards) == 16 and shards.image_size == 32
        np.testing.assert_array_equal(np.asarray(shards.images), arrays["images"])
        np.testing.assert_array_equal(shards.labels, arrays["labels"])
        index = json.loads((work / f"results/data/imagenet/shards/{split}/index.json").read_text())
        assert index["n_shards"] == 3  # 16 images in shards of 7
    val_shards = ShardedImages(work / "results/data/imagenet/shards/val")
    for key in ("masks", "mask_valid"):
        np.testing.assert_array_equal(np.asarray(getattr(val_shards, key)), val[key])
    np.testing.assert_array_equal(val_shards.mask_label, val["labels"])
    assert index["mask_label_known"] == index["mask_label_agrees"] == 16
