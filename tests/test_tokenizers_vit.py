"""ViT tokenizer and the mae regularizer: shapes, masking semantics, training integration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffusability.errors import DiffusabilityError
from diffusability.tokenizers import build_tokenizer, load_tokenizer, train_tokenizer
from diffusability.tokenizers.regularizers import build_regularizer
from diffusability.tokenizers.spec import paper_trans_f16d32
from diffusability.tokenizers.vit_vae import random_token_mask, sincos_positions

VIT = dict(architecture="vit", image_size=16, patch_size=4, vit_width=16, vit_depth=1, vit_heads=2,
           latent_channels=3)


def test_vit_shapes_and_properties():
    torch.manual_seed(0)
    model = build_tokenizer(VIT)
    assert model.downsample_factor == 4 and model.latent_channels == 3
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    posterior = model.encode(x)
    assert posterior.mean.shape == (2, 3, 4, 4)
    assert model.decode(posterior.sample()).shape == x.shape
    assert model.decode(torch.randn(2, 3, 2, 2)).shape == (2, 3, 8, 8)  # EQ's rescaled grid


def test_trans_f16d32_plan_has_a_16x16_grid_of_32_channels():
    spec = paper_trans_f16d32()
    assert spec.image_size // spec.patch_size == 16 and spec.latent_channels == 32


def test_masked_patches_do_not_influence_the_posterior():
    torch.manual_seed(1)
    model = build_tokenizer(VIT).eval()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    mask = torch.zeros(16, dtype=torch.bool)
    mask[5] = True  # patch row 1, column 1: pixels 4..7 × 4..7
    changed = x.clone()
    changed[..., 4:8, 4:8] = torch.rand(1, 3, 4, 4)
    with torch.no_grad():
        a, b = model.encode(x, token_mask=mask), model.encode(changed, token_mask=mask)
        c = model.encode(changed)
    torch.testing.assert_close(a.mean, b.mean)
    assert not torch.allclose(a.mean, c.mean)


def test_sincos_positions_are_distinct_and_bounded():
    positions = sincos_positions(4, 16)
    assert positions.shape == (16, 16) and positions.abs().max() <= 1
    assert torch.cdist(positions, positions).add(torch.eye(16)).min() > 0


def test_mae_masks_the_ratio_in_training_and_never_in_eval():
    torch.manual_seed(2)
    model = build_tokenizer(VIT).eval()
    reg = build_regularizer({"name": "mae", "ratio": 0.7}, 3)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        masked = reg.encode(model, x, torch.Generator().manual_seed(0))
        assert int(reg.last_mask.sum()) == int(16 * 0.7)
        reg.eval()
        plain = reg.encode(model, x, torch.Generator().manual_seed(0))
    assert reg.last_mask is None
    torch.testing.assert_close(plain.mean, model.encode(x).mean)
    assert not torch.allclose(masked.mean, plain.mean)
    assert int(random_token_mask(10, 0.3, None).sum()) == 3


def test_mae_training_resumes_exactly_and_rejects_conv(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    spec = {**VIT, "batch_size": 4, "steps": 4, "checkpoint_every": 2, "regularizer": {"name": "mae", "ratio": 0.3}}
    train_tokenizer(images, None, spec, tmp_path / "a")
    train_tokenizer(images, None, spec, tmp_path / "b", stop_after=2)
    train_tokenizer(images, None, spec, tmp_path / "b")
    a, b = load_tokenizer(tmp_path / "a").state_dict(), load_tokenizer(tmp_path / "b").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(DiffusabilityError, match="vit"):
        train_tokenizer(images, None, {"image_size": 16, "regularizer": {"name": "mae"}}, tmp_path / "c")
