"""Conv VAE: shapes over channel plans, posterior KL vs the closed form, f16d32 parameter count."""

from __future__ import annotations

import math

import pytest
import torch

from diffusability.errors import DiffusabilityError
from diffusability.tokenizers import DiagonalGaussian, TokenizerSpec, build_tokenizer
from diffusability.tokenizers.conv_vae import group_count
from diffusability.tokenizers.spec import paper_f16d32


@pytest.mark.parametrize("plan", [
    dict(image_size=32, base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, latent_channels=4),
    dict(image_size=16, base_channels=8, channel_mult=(1,), num_res_blocks=1, latent_channels=3),
    dict(image_size=32, base_channels=12, channel_mult=(1, 1, 2, 2), num_res_blocks=2, attn_resolutions=(8, 4),
         mid_attention=True, latent_channels=6),
    dict(image_size=24, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, latent_channels=2),
])
def test_shapes_follow_the_channel_plan(plan):
    torch.manual_seed(0)
    model = build_tokenizer(plan)
    factor = 2 ** (len(plan["channel_mult"]) - 1)
    assert model.downsample_factor == factor
    assert model.latent_channels == plan["latent_channels"]
    x = torch.rand(2, 3, plan["image_size"], plan["image_size"]) * 2 - 1
    posterior = model.encode(x)
    side = plan["image_size"] // factor
    assert posterior.mean.shape == (2, plan["latent_channels"], side, side)
    assert posterior.sample().shape == posterior.mode().shape
    assert model.decode(posterior.sample()).shape == x.shape


def test_posterior_kl_matches_closed_form_and_clamps_logvar():
    torch.manual_seed(1)
    mean = torch.randn(3, 2, 4, 4)
    logvar = torch.randn(3, 2, 4, 4) * 2
    logvar[0, 0, 0, 0] = 50.0  # clamped to 20
    logvar[0, 0, 0, 1] = -80.0  # clamped to -30
    posterior = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    clamped = logvar.clamp(-30, 20)
    q = torch.distributions.Normal(mean.double(), torch.exp(0.5 * clamped.double()))
    p = torch.distributions.Normal(torch.zeros_like(mean).double(), torch.ones_like(mean).double())
    expected = torch.distributions.kl_divergence(q, p).sum(dim=(1, 2, 3))
    torch.testing.assert_close(posterior.kl().double(), expected, rtol=1e-5, atol=1e-4)
    assert posterior.logvar.max() == 20 and posterior.logvar.min() == -30
    assert torch.equal(posterior.mode(), mean)


def test_posterior_sample_uses_generator_and_has_the_right_moments():
    mean = torch.full((1, 1, 200, 200), 0.5)
    logvar = torch.full((1, 1, 200, 200), math.log(4.0))
    posterior = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    a = posterior.sample(torch.Generator().manual_seed(3))
    b = posterior.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert abs(a.mean().item() - 0.5) < 0.03 and abs(a.std().item() - 2.0) < 0.03


def _conv(cin, cout, k):
    return cin * cout * k * k + cout


def _norm(c):
    return 2 * c


def _resblock(cin, cout):
    return _norm(cin) + _conv(cin, cout, 3) + _norm(cout) + _conv(cout, cout, 3) + (_conv(cin, cout, 1) if cin != cout else 0)


def _attention(c):
    return _norm(c) + 4 * _conv(c, c, 1)


def expected_parameter_count(ch, mult, blocks, attn, resolution, z):
    """The LDM AutoencoderKL parameter count written out from the channel plan."""
    total = _conv(3, ch, 3)
    width, res = ch, resolution
    for level, m in enumerate(mult):  # encoder
        for _ in range(blocks):
            total += _resblock(width, ch * m)
            width = ch * m
            total += _attention(width) if res in attn else 0
        if level != len(mult) - 1:
            total += _conv(width, width, 3)
            res //= 2
    total += 2 * _resblock(width, width) + _attention(width) + _norm(width) + _conv(width, 2 * z, 3)
    total += _conv(2 * z, 2 * z, 1) + _conv(z, z, 1)
    total += _conv(z, width, 3) + 2 * _resblock(width, width) + _attention(width)  # decoder in + mid
    for level in reversed(range(len(mult))):
        for _ in range(blocks + 1):
            total += _resblock(width, ch * mult[level])
            width = ch * mult[level]
            total += _attention(width) if res in attn else 0
        if level != 0:
            total += _conv(width, width, 3)
            res *= 2
    return total + _norm(width) + _conv(width, 3, 3)


def test_f16d32_parameter_count_matches_the_channel_plan_formula():
    model = build_tokenizer(paper_f16d32())
    expected = expected_parameter_count(128, (1, 1, 2, 2, 4), 2, (16,), 256, 32)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.downsample_factor == 16 and model.latent_channels == 32
    assert sum(isinstance(m, torch.nn.GroupNorm) and m.num_groups == 32 for m in model.modules()) > 0


def test_group_count_divides_channels():
    for channels in (3, 4, 16, 32, 48, 96, 128, 100):
        groups = group_count(channels)
        assert channels % groups == 0 and groups <= 32
    assert group_count(128) == 32 and group_count(48) == 24


def test_spec_rejects_unknown_keys_and_bad_sizes():
    with pytest.raises(DiffusabilityError, match="base_chanels"):
        TokenizerSpec.from_dict({"base_chanels": 8})
    with pytest.raises(DiffusabilityError, match="image_size"):
        TokenizerSpec.from_dict({"image_size": 30, "channel_mult": [1, 2, 2]})
    with pytest.raises(DiffusabilityError, match="encode"):
        build_tokenizer(None).encode(torch.zeros(1, 1, 32, 32))
