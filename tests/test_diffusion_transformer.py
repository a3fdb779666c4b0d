"""The configurable SiT / LightningDiT transformer: sizes, zero init, CFG, position encodings."""

import math

import pytest
import torch

from diffusability.diffusion.transformer import (DiffusionTransformer, SwiGluMlp, TimestepEmbedder,
                                                 TransformerConfig, apply_rope, build_backbone, count_parameters,
                                                 lightningdit_b, lightningdit_xl, rope_2d_angles, sincos_2d, sit_b,
                                                 sit_xl)
from diffusability.errors import DiffusabilityError


def tiny(family: str, **overrides) -> DiffusionTransformer:
    arch = dict(sit=dict(pos_embed="sincos", norm="layernorm", mlp="gelu"),
                lightningdit=dict(pos_embed="rope+sincos", norm="rmsnorm", mlp="swiglu"))[family]
    arch.update(overrides)
    torch.manual_seed(0)
    return DiffusionTransformer(TransformerConfig(in_channels=4, grid_size=4, num_classes=5, depth=2, width=32,
                                                  heads=2, **arch))


def randomise(model: torch.nn.Module) -> None:
    """Move away from the zero init so outputs are non-trivial."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("factory,lo,hi", [(sit_b, 128e6, 133e6), (lightningdit_b, 128e6, 133e6),
                                           (sit_xl, 670e6, 680e6), (lightningdit_xl, 670e6, 680e6)])
def test_parameter_counts_match_published_sizes(factory, lo, hi):
    with torch.device("meta"):
        model = DiffusionTransformer(factory(32))
    assert lo <= count_parameters(model) <= hi


def test_swiglu_keeps_the_parameter_count_of_a_4d_mlp():
    for width, hidden in ((768, 2048), (1152, 3072)):
        with torch.device("meta"):
            mlp = SwiGluMlp(width)
        assert mlp.fc_out.in_features == hidden
        assert abs(sum(p.numel() for p in mlp.parameters()) - 8 * width * width) < 0.01 * 8 * width * width


@pytest.mark.parametrize("family", ["sit", "lightningdit"])
def test_zero_init_gives_exactly_zero_output(family):
    model = tiny(family)
    x = torch.randn(3, 4, 4, 4)
    out = model(x, torch.rand(3), torch.tensor([0, 4, 5]))
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("family", ["sit", "lightningdit"])
def test_guidance_formula_and_scale_one(family):
    model = tiny(family).eval()
    randomise(model)
    x, t, y = torch.randn(3, 4, 4, 4), torch.rand(3), torch.tensor([0, 2, 4])
    with torch.no_grad():
        cond = model(x, t, y)
        uncond = model(x, t, torch.full_like(y, 5))
        assert torch.allclose(model.forward_with_cfg(x, t, y, 1.0), cond, atol=1e-5)
        guided = model.forward_with_cfg(x, t, y, 2.5)
        assert torch.allclose(guided, uncond + 2.5 * (cond - uncond), atol=1e-4)
        legacy = model.forward_with_cfg(x, t, y, 2.5, guidance_channels=3)
        assert torch.allclose(legacy[:, :3], guided[:, :3], atol=1e-5)
        assert torch.allclose(legacy[:, 3:], cond[:, 3:], atol=1e-5)
    assert not torch.allclose(cond, uncond)  # the label matters once weights are non-zero


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for use_checkpoint in (False, True):
        model = tiny("lightningdit", use_checkpoint=use_checkpoint)
        randomise(model)
        torch.manual_seed(2)
        x, t, y = torch.randn(2, 4, 4, 4), torch.rand(2), torch.tensor([1, 3])
        model(x, t, y).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_sincos_2d_matches_the_mae_formula():
    dim, grid = 8, 3
    emb = sincos_2d(dim, grid)
    for row in range(grid):
        for col in range(grid):
            expected = []
            for pos in (col, row):  # MAE encodes the column coordinate first
                omega = [1 / 10000 ** (k / (dim / 4)) for k in range(dim // 4)]
                expected += [math.sin(pos * w) for w in omega] + [math.cos(pos * w) for w in omega]
            assert torch.allclose(emb[row * grid + col], torch.tensor(expected, dtype=torch.float32), atol=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    head_dim, grid = 8, 5
    angles = rope_2d_angles(head_dim, grid)
    cos, sin = torch.cos(angles), torch.sin(angles)
    torch.manual_seed(0)
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    rq = apply_rope(q.expand(1, 1, grid * grid, head_dim), cos, sin)[0, 0]
    rk = apply_rope(k.expand(1, 1, grid * grid, head_dim), cos, sin)[0, 0]

    def score(a, b):  # (row, col) of the query and of the key
        return float(rq[a[0] * grid + a[1]] @ rk[b[0] * grid + b[1]])

    assert score((0, 0), (1, 2)) == pytest.approx(score((2, 1), (3, 3)), abs=1e-5)
    assert score((4, 0), (1, 2)) == pytest.approx(score((3, 2), (0, 4)), abs=1e-5)
    assert score((0, 0), (1, 2)) != pytest.approx(score((0, 0), (2, 1)), abs=1e-3)
    # a rotation keeps norms
    assert torch.allclose(rq.norm(dim=-1), q.norm().expand(grid * grid), atol=1e-5)


def test_timestep_embedding_uses_continuous_t_without_scaling():
    t = torch.tensor([0.0, 0.25, 1.0])
    features = TimestepEmbedder.sinusoidal(t, 8)
    freqs = [10000 ** (-k / 4) for k in range(4)]
    expected = [[math.cos(v * f) for f in freqs] + [math.sin(v * f) for f in freqs] for v in t.tolist()]
    assert torch.allclose(features, torch.tensor(expected), atol=1e-6)


def test_build_backbone_from_a_spec_mapping_and_bad_input():
    model = build_backbone(dict(depth=1, width=16, heads=2, pos_embed="rope+sincos", norm="rmsnorm", mlp="swiglu",
                                qk_norm=True, lr=1.0), in_channels=3, grid_size=4, num_classes=7)
    assert model.config.mlp == "swiglu" and model.null_label == 7
    with pytest.raises(DiffusabilityError, match="input x has shape"):
        model(torch.zeros(2, 3, 5, 5), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(DiffusabilityError, match="norm must be one of"):
        build_backbone(dict(depth=1, width=16, heads=2, norm="batchnorm"), 3, 4, 7)
    with pytest.raises(DiffusabilityError, match="missing"):
        build_backbone(dict(depth=1, width=16), 3, 4, 7)


def test_patch_size_two_roundtrip_shape():
    model = DiffusionTransformer(TransformerConfig(in_channels=3, grid_size=4, num_classes=2, depth=1, width=16,
                                                   heads=2, patch_size=2))
    randomise(model)
    assert model(torch.randn(2, 3, 4, 4), torch.rand(2), torch.tensor([0, 1])).shape == (2, 3, 4, 4)
