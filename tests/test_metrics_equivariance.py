"""Affine equivariance with encoders whose (non-)equivariance is known in closed form."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusability.errors import DiffusabilityError
from diffusability.metrics.equivariance import affine_equivariance


def pooling_encoder(x):
    """Average pooling with stride 4 then a 1×1 channel map: commutes with rot90 and with 2× bilinear."""
    mix = torch.tensor([[1.0, 0.5, -0.2], [0.1, -1.0, 0.3], [0.4, 0.2, 0.9], [-0.3, 0.7, 0.2]], dtype=x.dtype)
    return torch.einsum("dc,nchw->ndhw", mix, F.avg_pool2d(x, 4))


def test_equivariant_encoder_has_zero_rotation_and_half_scale_error():
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = affine_equivariance(pooling_encoder, images, rotations=(1, 2, 3), scales=(0.5,), batch_size=2)
    assert result["rotate_error"] == pytest.approx(0.0, abs=1e-10)
    assert result["rotate_consistency"] == pytest.approx(1.0, abs=1e-6)
    assert result["scale_error"] == pytest.approx(0.0, abs=1e-10)  # 2× bilinear = 2×2 mean
    assert set(result["per_transform"]) == {"rot90_k1", "rot90_k2", "rot90_k3", "scale_0.5"}
    assert result["n"] == 5 and result["skipped_scales"] == []


def test_fixed_pattern_breaks_rotation_in_closed_form():
    pattern = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(1))

    def encoder(x):
        return F.avg_pool2d(x[:, :2], 8) + pattern

    images = torch.zeros(3, 3, 32, 32)
    result = affine_equivariance(encoder, images, rotations=(1, 2), scales=())
    for k in (1, 2):
        rotated = torch.rot90(pattern, k, dims=(2, 3))
        error = float((pattern - rotated).pow(2).sum() / rotated.pow(2).sum())
        cos = float(F.cosine_similarity(pattern, rotated, dim=1).mean())
        assert result["per_transform"][f"rot90_k{k}"]["error"] == pytest.approx(error, rel=1e-6)
        assert result["per_transform"][f"rot90_k{k}"]["consistency"] == pytest.approx(cos, rel=1e-6)
    assert np.isnan(result["scale_error"])


def test_scales_not_divisible_by_stride_are_skipped():
    images = torch.randn(2, 3, 32, 32)
    result = affine_equivariance(pooling_encoder, images, rotations=(), scales=(0.5, 0.5625, 0.3, 0.75))
    assert result["skipped_scales"] == [0.5625, 0.3]
    assert set(result["per_transform"]) == {"scale_0.5", "scale_0.75"}


def test_normalisation_and_errors():
    images = torch.randn(2, 3, 16, 16)
    mean, std = torch.tensor([5.0, 0, 0, 0]), torch.tensor([2.0, 1, 1, 1])
    result = affine_equivariance(pooling_encoder, images, rotations=(1,), scales=(), latent_mean=mean, latent_std=std)
    assert result["rotate_error"] == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(DiffusabilityError, match="images"):
        affine_equivariance(pooling_encoder, torch.randn(3, 16, 16))
    with pytest.raises(DiffusabilityError, match="NaN"):
        affine_equivariance(pooling_encoder, torch.full((1, 3, 16, 16), float("nan")))
