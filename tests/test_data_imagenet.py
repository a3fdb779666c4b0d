"""ImageNet / ImageNet-S preprocessing on a tiny generated tree in the real folder layouts."""

import json

import numpy as np
import pytest
from PIL import Image

from diffusability.cli import main
from diffusability.data.imagenet import (adm_center_crop, adm_center_crop_labels, class_wnids,
                                         list_image_folder, load_images, prepare_imagenet_splits)
from diffusability.data.imagenet_s import decode_imagenet_s_mask, foreground_and_valid, index_masks
from diffusability.data.spec import parse_data_spec
from diffusability.errors import DiffusabilityError
from diffusability.io import load_arrays


def reference_center_crop(pil_image, image_size):
    """ADM's center_crop_arr, restated from its description (docs/models.md §4.1) on arrays."""
    k = 0
    w, h = pil_image.size
    while min(w, h) >= 2 * image_size:  # count the halvings first, then apply them
        w, h, k = w // 2, h // 2, k + 1
    for _ in range(k):
        pil_image = pil_image.resize((pil_image.size[0] // 2, pil_image.size[1] // 2), resample=Image.BOX)
    ratio = image_size / min(pil_image.size)
    new_size = tuple(int(round(s * ratio)) for s in pil_image.size)
    arr = np.array(pil_image.resize(new_size, resample=Image.BICUBIC))
    y0 = (arr.shape[0] - image_size) // 2
    x0 = (arr.shape[1] - image_size) // 2
    return arr[y0:y0 + image_size, x0:x0 + image_size]


@pytest.mark.parametrize("width, height, size", [(37, 53, 16), (53, 37, 16), (131, 97, 32), (17, 17, 17),
                                                 (300, 99, 24), (64, 129, 32), (15, 40, 16)])
def test_adm_center_crop_matches_restatement(width, height, size):
    rng = np.random.default_rng(width * height)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    out = adm_center_crop(image, size)
    assert out.size == (size, size)
    np.testing.assert_array_equal(np.asarray(out), reference_center_crop(image, size))


def test_label_crop_maps_pixels_to_their_geometric_source():
    """A label map whose value encodes its own (y, x): every output pixel must come from the
    source pixel that the ADM geometry puts under it (within the nearest-rounding slack)."""
    height, width, size = 203, 157, 24
    ids = (np.arange(height)[:, None] * 1000 + np.arange(width)[None, :]).astype(np.int64)
    out = adm_center_crop_labels(ids, size)
    assert out.shape == (size, size) and out.dtype == ids.dtype
    src_y, src_x = out // 1000, out % 1000
    # Forward geometry: k halvings, then a resize to (rw, rh), then the crop offset.
    k, w, h = 0, width, height
    while min(w, h) >= 2 * size:
        w, h, k = w // 2, h // 2, k + 1
    scale = size / min(w, h)
    rw, rh = round(w * scale), round(h * scale)
    top, left = (rh - size) // 2, (rw - size) // 2
    j = np.arange(size) + left + 0.5
    i = np.arange(size) + top + 0.5
    expect_x = (j * w / rw) * 2**k  # pixel-centre positions in original coordinates
    expect_y = (i * h / rh) * 2**k
    slack = 2**k + 1
    assert np.abs(src_x - expect_x[None, :]).max() <= slack
    assert np.abs(src_y - expect_y[:, None]).max() <= slack
    # Rows keep their row, columns keep their column, and both move monotonically.
    assert (np.diff(src_x, axis=1) >= 0).all() and (np.diff(src_y, axis=0) >= 0).all()
    assert (src_x == src_x[:1]).all() and (src_y == src_y[:, :1]).all()


def test_label_crop_aligned_with_image_crop():
    """A sharp rectangle drawn in an image and in its label map lands in the same place."""
    height, width, size = 181, 263, 32
    ids = np.zeros((height, width), dtype=np.int32)
    ids[40:150, 90:200] = 7
    image = Image.fromarray(np.where(ids[..., None] == 7, 250, 5).astype(np.uint8).repeat(3, axis=2))
    crop = np.asarray(adm_center_crop(image, size))[..., 0]
    labels = adm_center_crop_labels(ids, size)
    # Away from the boundary (bicubic blur), the image is bright exactly where the label is 7.
    inner = labels == 7
    edge = np.zeros_like(inner)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            edge |= np.roll(np.roll(inner, dy, 0), dx, 1) != inner
    assert inner.sum() > 50 and (~inner).sum() > 50
    assert (crop[inner & ~edge] > 200).all() and (crop[~inner & ~edge] < 60).all()


def test_decode_imagenet_s_ids_and_foreground():
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (1, 0, 9)       # id 1 (blue is ignored)
    rgb[0, 1] = (232, 3, 0)     # id 232 + 768 = 1000: ignore
    rgb[0, 2] = (151, 3, 0)     # id 919
    rgb[1, 0] = (0, 0, 0)       # id 0: background
    rgb[1, 1] = (255, 1, 0)     # id 511
    rgb[1, 2] = (0, 1, 0)       # id 256
    ids = decode_imagenet_s_mask(rgb)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [[1, 1000, 919], [0, 511, 256]])
    fg, valid = foreground_and_valid(ids)
    np.testing.assert_array_equal(fg, [[True, False, True], [False, True, True]])
    np.testing.assert_array_equal(valid, [[True, False, True], [True, True, True]])
    with pytest.raises(DiffusabilityError, match="uint8"):
        decode_imagenet_s_mask(rgb.astype(np.int32))


# ----------------------------------------------------------------------------- a tiny tree

WNIDS = ["n01440764", "n01443537", "n01484850"]
SIZES = [(70, 50), (45, 61), (90, 90), (33, 47)]


def id_to_rgb(ids):
    return np.stack([ids % 256, ids // 256, np.zeros_like(ids)], axis=-1).astype(np.uint8)


def object_and_ids(width, height, class_id, rng):
    """An image with a bright object on a dark background, its ImageNet-S ids (with an ignore
    band around the object) and the boolean object region."""
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
    r = np.hypot((yy - cy) / height, (xx - cx) / width)
    obj = r < 0.25
    ids = np.where(obj, class_id, 0)
    ids[(r >= 0.25) & (r < 0.28)] = 1000
    image = np.where(obj[..., None], np.array([240, 230, 220]), np.array([15, 20, 25])).astype(np.uint8)
    return image, ids


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    counter = 0
    for c, wnid in enumerate(WNIDS):
        for split in ("train", "val"):
            (root / split / wnid).mkdir(parents=True)
        (root / "validation-segmentation" / wnid).mkdir(parents=True)
        for k, (w, h) in enumerate(SIZES):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                root / "train" / wnid / f"{wnid}_{k}.JPEG", quality=95)
            counter += 1
            stem = f"ILSVRC2012_val_{counter:08d}"
            image, ids = object_and_ids(w, h, c + 1, rng)
            Image.fromarray(image).save(root / "val" / wnid / f"{stem}.JPEG", quality=98)
            if k < 3:  # one val image per class has no ImageNet-S mask
                Image.fromarray(id_to_rgb(ids)).save(root / "validation-segmentation" / wnid / f"{stem}.png")
    # A grayscale image is fine (converted to RGB); a truncated one is unreadable.
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(root / "train" / WNIDS[1] / "gray.JPEG")
    good = (root / "train" / WNIDS[2] / f"{WNIDS[2]}_0.JPEG").read_bytes()
    (root / "train" / WNIDS[2] / "broken.JPEG").write_bytes(good[: len(good) // 3])
    return root


def spec_for(tree, tmp_path, **overrides):
    base = {"seed": 0, "source": "imagenet", "image_size": 16, "n_train": 0, "n_val": 0, "n_classes": 3,
            "imagenet": {"train_dir": str(tree / "train"), "val_dir": str(tree / "val"),
                         "masks_dir": str(tree / "validation-segmentation"), "max_bad_fraction": 0.2,
                         "cache_dir": str(tmp_path / "hf")}}
    base.update(overrides)
    return base


def test_listing_and_labels_follow_sorted_wnids(tree, tmp_path):
    assert class_wnids(tree / "train") == sorted(WNIDS)
    listing = list_image_folder(tree / "val", cache_dir=str(tmp_path / "hf"))
    assert len(listing.paths) == len(WNIDS) * len(SIZES)
    assert all(p.split("/")[-2] == w for p, w in zip(listing.paths, listing.wnids))
    assert len(index_masks(tree / "validation-segmentation")) == 3 * len(WNIDS)


def test_listing_local_files_prints_no_download_progress(tmp_path, capfd):
    """datasets reports "Downloading data" for 16 or more local files; the listing silences it and restores
    the progress-bar setting after."""
    import datasets
    from PIL import Image

    for i in range(20):
        folder = tmp_path / "tree" / WNIDS[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i, 2 * i, 3 * i)).save(folder / f"{i}.JPEG")
    enabled = datasets.is_progress_bar_enabled()
    capfd.readouterr()
    listing = list_image_folder(tmp_path / "tree", cache_dir=str(tmp_path / "hf"))
    output = capfd.readouterr()
    assert len(listing.paths) == 20
    assert "Downloading data" not in output.err + output.out and "Generating" not in output.err + output.out
    assert datasets.is_progress_bar_enabled() == enabled


def test_bad_image_counted_and_threshold_enforced(tree):
    paths = [str(tree / "train" / WNIDS[2] / "broken.JPEG"), str(tree / "train" / WNIDS[1] / "gray.JPEG"),
             str(tree / "train" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG")]
    out = load_images(paths, [2, 1, 0], 16, max_bad_fraction=0.5)
    assert len(out["bad"]) == 1 and out["bad"][0][0] == paths[0]
    np.testing.assert_array_equal(out["labels"], [1, 0])
    assert out["images"].shape == (2, 16, 16, 3)
    # Gray input becomes three equal channels.
    assert (out["images"][0, ..., 0] == out["images"][0, ..., 2]).all()
    with pytest.raises(DiffusabilityError, match="broken.JPEG"):
        load_images(paths, [2, 1, 0], 16, max_bad_fraction=0.001)


def test_prepare_imagenet_splits_with_imagenet_s_masks(tree, tmp_path):
    splits = prepare_imagenet_splits(parse_data_spec(spec_for(tree, tmp_path)))
    train, val = splits["train"], splits["val"]
    # 12 train JPEGs + gray; the broken one is skipped (1/14 < 0.2).
    assert len(train["labels"]) == 3 * len(SIZES) + 1
    assert np.bincount(train["labels"]).tolist() == [4, 5, 4]
    assert not train["mask_valid"].any()  # train images have no masks: nothing is known
    # Val keeps only images with a mask; their masks line up with the bright object.
    assert len(val["labels"]) == 3 * 3 and np.bincount(val["labels"]).tolist() == [3, 3, 3]
    for image, fg, valid in zip(val["images"], val["masks"], val["mask_valid"]):
        assert fg.sum() > 5 and (~valid).sum() > 0 and not (fg & ~valid).any()
        brightness = image.astype(int).mean(-1)
        core = fg.copy()
        for axis in (0, 1):
            for shift in (-1, 1):
                core &= np.roll(fg, shift, axis)
        background = valid & ~fg
        far_bg = background.copy()
        for axis in (0, 1):
            for shift in (-1, 1):
                far_bg &= np.roll(background, shift, axis)
        assert brightness[core].min() > 180 and brightness[far_bg].max() < 80


def test_class_subset_and_count(tree, tmp_path):
    spec = parse_data_spec(spec_for(tree, tmp_path, n_classes=2, n_train=5, n_val=4))
    splits = prepare_imagenet_splits(spec)
    assert set(splits["train"]["labels"].tolist()) <= {0, 1} and len(splits["train"]["labels"]) == 5
    assert len(splits["val"]["labels"]) == 4
    with pytest.raises(DiffusabilityError, match="n_train"):
        prepare_imagenet_splits(parse_data_spec(spec_for(tree, tmp_path, n_train=500)))


def test_prepare_data_command_imagenet(tree, tmp_path):
    out_train, out_val = tmp_path / "train.safetensors", tmp_path / "val.safetensors"
    spec = spec_for(tree, tmp_path, n_val=6)
    code = main(["prepare-data", "--spec", json.dumps(spec), "--out-train", str(out_train),
                 "--out-val", str(out_val)])
    assert code == 0
    val = load_arrays(out_val)
    assert set(val) == {"images", "labels", "masks", "mask_valid", "mask_label"}
    assert (val["mask_label"] == -1).all()  # no category list given: the mask classes stay unmapped
    assert val["images"].shape == (6, 16, 16, 3) and val["mask_valid"].dtype == np.bool_
    strict = spec_for(tree, tmp_path)
    strict["imagenet"]["max_bad_fraction"] = 0.0
    code = main(["prepare-data", "--spec", json.dumps(strict), "--out-train", str(tmp_path / "t2.safetensors"),
                 "--out-val", str(tmp_path / "v2.safetensors")])
    assert code == 2 and not (tmp_path / "t2.safetensors").exists()


def test_imagenet_s_class_ids_map_to_imagenet_labels(tree, tmp_path):
    """With the variant's category list the dominant ImageNet-S class of each val mask gives the image's
    ImageNet-1k label (the tree's ids are the class positions + 1); a permuted list gives permuted labels."""
    from diffusability.data.imagenet_s import class_id_to_label, dominant_label, read_categories

    categories = tmp_path / "categories.txt"
    categories.write_text("\n".join(WNIDS) + "\n")
    spec = spec_for(tree, tmp_path)
    spec["imagenet"]["mask_categories"] = str(categories)
    val = prepare_imagenet_splits(parse_data_spec(spec))["val"]
    np.testing.assert_array_equal(val["mask_label"], val["labels"])
    categories.write_text("\n".join(reversed(WNIDS)) + "\n")
    val = prepare_imagenet_splits(parse_data_spec(spec))["val"]
    np.testing.assert_array_equal(val["mask_label"], 2 - val["labels"])

    lookup = class_id_to_label(["n09999999", WNIDS[1]], {w: k for k, w in enumerate(WNIDS)})
    assert lookup[0] == lookup[1] == lookup[1000] == -1 and lookup[2] == 1  # class outside the study: -1
    ids = np.array([[0, 2, 2], [1000, 1, 2]])
    assert dominant_label(ids, lookup) == 1 and dominant_label(np.zeros((2, 2), int), lookup) == -1
    (tmp_path / "bad.txt").write_text("not-a-wnid\n")
    with pytest.raises(DiffusabilityError, match="not wnids"):
        read_categories(tmp_path / "bad.txt")
