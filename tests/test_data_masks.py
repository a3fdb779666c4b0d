"""Token-grid pooling of foreground masks, checked against explicit per-token loops."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffusability.data.masks import images_with_enough_tokens, pool_masks_to_grid
from diffusability.errors import DiffusabilityError


def loop_pool(masks, grid, rule, threshold=0.5, valid=None):
    """Direct restatement of the pooling rules, one token at a time."""
    n, height, width = masks.shape
    h, w = grid
    ph, pw = height // h, width // w
    out = np.zeros((n, h, w), dtype=bool)
    for k in range(n):
        for i in range(h):
            for j in range(w):
                fg = valid_px = 0
                any_fg = False
                for a in range(i * ph, (i + 1) * ph):
                    for b in range(j * pw, (j + 1) * pw):
                        ok = True if valid is None else bool(valid[k, a, b])
                        if ok:
                            valid_px += 1
                            if masks[k, a, b]:
                                fg += 1
                                any_fg = True
                if rule == "max":
                    out[k, i, j] = any_fg
                else:
                    out[k, i, j] = valid_px > 0 and fg / valid_px >= threshold
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), h=st.sampled_from([1, 2, 4]), w=st.sampled_from([1, 2, 3]),
       ph=st.sampled_from([1, 2, 3]), pw=st.sampled_from([1, 2, 4]), rule=st.sampled_from(["max", "fraction"]),
       threshold=st.sampled_from([0.25, 0.5, 1.0]), use_valid=st.booleans(), density=st.floats(0.05, 0.95))
def test_pooling_matches_loops(seed, h, w, ph, pw, rule, threshold, use_valid, density):
    rng = np.random.default_rng(seed)
    masks = rng.random((3, h * ph, w * pw)) < density
    valid = rng.random(masks.shape) < 0.7 if use_valid else None
    got = pool_masks_to_grid(masks, (h, w), rule=rule, threshold=threshold, valid=valid)
    np.testing.assert_array_equal(got, loop_pool(masks, (h, w), rule, threshold, valid))


def test_fraction_threshold_is_inclusive_and_ignores_invalid_pixels():
    masks = np.zeros((1, 2, 2), dtype=bool)
    masks[0, 0, 0] = True  # 1 FG of 4 pixels
    assert not pool_masks_to_grid(masks, (1, 1), "fraction", 0.5)[0, 0, 0]
    valid = np.ones_like(masks)
    valid[0, 1, :] = False  # now 1 FG of 2 valid pixels = exactly 0.5
    assert pool_masks_to_grid(masks, (1, 1), "fraction", 0.5, valid=valid)[0, 0, 0]
    # A token with no valid pixel is background, even when its (ignored) pixels are FG.
    assert not pool_masks_to_grid(masks, (1, 1), "max", valid=np.zeros_like(masks))[0, 0, 0]


def test_fallback_to_max_only_for_images_without_fraction_foreground():
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0, 0] = True        # image 0: one FG pixel, no token reaches 0.5
    masks[1, :2, :2] = True      # image 1: a full token, plus a sliver elsewhere
    masks[1, 3, 3] = True
    got = pool_masks_to_grid(masks, (2, 2), "fraction", fallback_to_max=True)
    np.testing.assert_array_equal(got[0], [[True, False], [False, False]])
    np.testing.assert_array_equal(got[1], [[True, False], [False, False]])


def test_torch_in_torch_out():
    masks = torch.rand(2, 8, 8) > 0.5
    got = pool_masks_to_grid(masks, (4, 4))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.bool
    np.testing.assert_array_equal(got.numpy(), loop_pool(masks.numpy(), (4, 4), "max"))


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(masks=np.zeros((1, 10, 8), bool), grid=(4, 4)), "not divisible"),
    (dict(masks=np.zeros((1, 8, 8), np.uint8), grid=(4, 4)), "dtype bool"),
    (dict(masks=np.zeros((8, 8), bool), grid=(4, 4)), "(N, H, W)"),
    (dict(masks=np.zeros((1, 8, 8), bool), grid=(4, 4), rule="mean"), "rule"),
    (dict(masks=np.zeros((1, 8, 8), bool), grid=(4, 4), valid=np.zeros((1, 4, 4), bool)), "valid"),
])
def test_bad_input_is_named(kwargs, fragment):
    with pytest.raises(DiffusabilityError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        pool_masks_to_grid(**kwargs)


def test_images_with_enough_tokens():
    tokens = np.zeros((3, 4, 4), dtype=bool)
    tokens[1, :2] = True   # 8 FG, 8 BG
    tokens[2, :3] = True   # 12 FG, 4 BG
    np.testing.assert_array_equal(images_with_enough_tokens(tokens, 5, 5), [False, True, False])
