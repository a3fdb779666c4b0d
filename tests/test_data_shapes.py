"""The procedural shapes set: determinism, balance, exact masks, coverage and learnability."""

import math
import time

import numpy as np
import pytest

from diffusability.data.masks import pool_masks_to_grid
from diffusability.data.shapes import (APPEARANCES, MAX_CLASSES, SHAPES, class_definition,
                                       generate_shapes, hsv_to_rgb)
from diffusability.errors import DiffusabilityError


def test_same_seed_same_bytes_and_other_seed_differs():
    a = generate_shapes(12, 32, seed=3)
    b = generate_shapes(12, 32, seed=3)
    for key in ("images", "labels", "masks"):
        assert a[key].tobytes() == b[key].tobytes()
    c = generate_shapes(12, 32, seed=4)
    assert a["images"].tobytes() != c["images"].tobytes()


def test_image_i_does_not_depend_on_n_or_chunking():
    # 300 images span two render chunks of 256; image 270 must equal image 0 of a stream
    # started at 270, and the first 10 must equal a 10-image run.
    long = generate_shapes(300, 32, seed=11, n_classes=5)
    short = generate_shapes(10, 32, seed=11, n_classes=5)
    tail = generate_shapes(30, 32, seed=11, n_classes=5, start_index=270)
    for key in ("images", "labels", "masks"):
        np.testing.assert_array_equal(long[key][:10], short[key])
        np.testing.assert_array_equal(long[key][270:], tail[key])


def test_output_types_and_shapes():
    out = generate_shapes(5, 64, seed=0)
    assert out["images"].dtype == np.uint8 and out["images"].shape == (5, 64, 64, 3)
    assert out["labels"].dtype == np.int64 and out["labels"].shape == (5,)
    assert out["masks"].dtype == np.bool_ and out["masks"].shape == (5, 64, 64)
    empty = generate_shapes(0, 32, seed=0)
    assert empty["images"].shape == (0, 32, 32, 3)


@pytest.mark.parametrize("n_classes", [1, 6, 8, 24])
def test_classes_exactly_balanced_per_block(n_classes):
    labels = generate_shapes(3 * n_classes, 16, seed=5, n_classes=n_classes)["labels"]
    for block in labels.reshape(3, n_classes):
        assert sorted(block.tolist()) == list(range(n_classes))


def test_balance_within_one_for_any_stream_start():
    labels = generate_shapes(50, 16, seed=2, n_classes=8, start_index=3)["labels"]
    counts = np.bincount(labels, minlength=8)
    assert counts.max() - counts.min() <= 2 and counts.sum() == 50


def test_classes_are_distinct_shape_appearance_pairs():
    pairs = [class_definition(c) for c in range(MAX_CLASSES)]
    assert len(set(pairs)) == MAX_CLASSES == len(SHAPES) * len(APPEARANCES)
    # With 8 classes some shape appears twice (different appearance) and some appearance
    # appears with several shapes: neither cue alone identifies the class.
    first8 = pairs[:8]
    assert len({s for s, _ in first8}) < 8 and len({a for _, a in first8}) < 8


@pytest.mark.parametrize("size", [32, 64])
def test_masks_are_exactly_the_painted_pixels(size):
    # On a pure black background, the painted pixels are exactly the non-black ones.
    out = generate_shapes(96, size, seed=7, n_classes=24, constant_background=True)
    painted = (out["images"] != 0).any(axis=-1)
    np.testing.assert_array_equal(painted, out["masks"])


def test_textured_background_leaves_the_foreground_unchanged():
    # The background is the only difference between the two renders: foreground pixels and
    # masks are identical, so the mask is what was drawn in the textured images too.
    plain = generate_shapes(40, 32, seed=9, constant_background=True)
    textured = generate_shapes(40, 32, seed=9)
    np.testing.assert_array_equal(plain["masks"], textured["masks"])
    m = textured["masks"]
    np.testing.assert_array_equal(plain["images"][m], textured["images"][m])
    assert (plain["images"][~m] == 0).all()
    assert textured["images"][~m].std() > 20  # varied backgrounds, not a flat colour


@pytest.mark.parametrize("size", [32, 64])
def test_foreground_coverage_and_token_mix(size):
    out = generate_shapes(400, size, seed=1, n_classes=24)
    coverage = out["masks"].mean(axis=(1, 2))
    assert coverage.min() >= 0.13 and coverage.max() <= 0.6
    tokens = pool_masks_to_grid(out["masks"], (8, 8), rule="fraction")
    fg_tokens = tokens.sum(axis=(1, 2))
    assert fg_tokens.min() >= 4 and (64 - fg_tokens).min() >= 16


def test_shape_never_touches_the_border():
    out = generate_shapes(200, 32, seed=4, n_classes=24)
    m = out["masks"]
    assert not (m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any())


def test_hsv_to_rgb_known_colours():
    hsv = np.array([[0, 1, 1], [1 / 3, 1, 1], [2 / 3, 1, 1], [0, 0, 0.5], [1 / 6, 1, 1], [0.5, 0.5, 1]])
    expected = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5], [1, 1, 0], [0.5, 1, 1]])
    np.testing.assert_allclose(hsv_to_rgb(hsv), expected, atol=1e-12)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(n=-1, image_size=32, seed=0), "n="),
    (dict(n=2, image_size=8, seed=0), "image_size"),
    (dict(n=2, image_size=32, seed=0, n_classes=25), "n_classes"),
    (dict(n=2, image_size=32, seed=0, n_classes=0), "n_classes"),
])
def test_bad_arguments(kwargs, fragment):
    with pytest.raises(DiffusabilityError, match=fragment):
        generate_shapes(**kwargs)


def test_speed_2500_images_at_32px():
    start = time.perf_counter()
    generate_shapes(2500, 32, seed=0)
    assert time.perf_counter() - start < 5.0


def test_classes_learnable_but_not_from_mean_colour():
    """A nearest-centroid classifier on mean image colour is weak; a linear model on small
    downsampled pixels plus colour histograms of the foreground does better than chance."""
    train = generate_shapes(800, 32, seed=21)
    test = generate_shapes(400, 32, seed=22)

    def mean_colour(images):
        return images.reshape(len(images), -1, 3).mean(axis=1)

    # Mean colour alone: accuracy well below perfect (backgrounds vary, shapes matter).
    xtr, xte = mean_colour(train["images"]), mean_colour(test["images"])
    centroids = np.stack([xtr[train["labels"] == c].mean(0) for c in range(8)])
    pred = np.argmin(((xte[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    mean_colour_accuracy = (pred == test["labels"]).mean()
    assert mean_colour_accuracy < 0.6

    # The class is a function of what is drawn: the foreground's colour statistics plus its
    # shape descriptor (radial profile of the mask) separate the classes far above chance.
    def features(data):
        m = data["masks"].astype(np.float64)
        imgs = data["images"].astype(np.float64) / 255
        area = m.sum((1, 2))
        fg_mean = (imgs * m[..., None]).sum((1, 2)) / area[:, None]
        fg_std = np.sqrt(((imgs - fg_mean[:, None, None]) ** 2 * m[..., None]).sum((1, 2)) / area[:, None])
        yy, xx = np.mgrid[0:32, 0:32] + 0.5
        cy = (m * yy).sum((1, 2)) / area
        cx = (m * xx).sum((1, 2)) / area
        r = np.sqrt((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / np.sqrt(area / math.pi)[:, None, None]
        ring_fill = []
        for lo in np.arange(0.0, 1.6, 0.2):  # share of each radial ring that is foreground
            ring = (r >= lo) & (r < lo + 0.2)
            ring_fill.append((ring & (m > 0)).sum((1, 2)) / np.maximum(ring.sum((1, 2)), 1))
        bins = np.stack(ring_fill, axis=1)
        return np.concatenate([fg_mean, fg_std, bins], axis=1)

    ftr, fte = features(train), features(test)
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-9
    ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
    onehot = np.eye(8)[train["labels"]]
    design = np.c_[ftr, np.ones(len(ftr))]
    weights = np.linalg.lstsq(design.T @ design + 1e-3 * np.eye(design.shape[1]), design.T @ onehot, rcond=None)[0]
    accuracy = (np.argmax(np.c_[fte, np.ones(len(fte))] @ weights, 1) == test["labels"]).mean()
    assert accuracy > 0.9 > 0.6 > mean_colour_accuracy
