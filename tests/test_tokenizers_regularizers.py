"""Regularizers: each one's defining property, against closed forms and brute-force loops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from diffusability.errors import DiffusabilityError
from diffusability.tokenizers import build_tokenizer
from diffusability.tokenizers.losses import adaptive_weight
from diffusability.tokenizers.regularizers import RegularizerContext, build_regularizer
from diffusability.tokenizers.regularizers.eq import flip_pair, scale_pair
from diffusability.tokenizers.regularizers.lcr import average_local_correlation
from diffusability.tokenizers.regularizers.vf import marginal_cosine_loss, marginal_distance_matrix_loss


def test_unknown_name_and_unknown_parameter_are_clear_errors():
    with pytest.raises(DiffusabilityError, match="'vfloss'"):
        build_regularizer({"name": "vfloss"}, 4, 8)
    with pytest.raises(DiffusabilityError, match="thresh"):
        build_regularizer({"name": "lcr", "thresh": 0.7}, 4)
    with pytest.raises(DiffusabilityError, match="teacher"):
        build_regularizer({"name": "mcos"}, 4, None)
    assert build_regularizer(None, 4).name == "none"


def _identity_projector(regularizer, channels):
    with torch.no_grad():
        regularizer.projector.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))


def test_mcos_is_zero_when_cosine_exceeds_one_minus_margin_and_matches_closed_form_below():
    torch.manual_seed(0)
    reg = build_regularizer({"name": "mcos", "adaptive": False, "weight": 1.0}, 6, 6)
    _identity_projector(reg, 6)
    features = torch.randn(2, 6, 4, 4)
    assert reg.raw_loss(features.clone(), features).item() == 0.0
    # a perturbation keeping every cosine above 1 − m1 = 0.5 still costs nothing
    noisy = features + 0.2 * features.norm(dim=1, keepdim=True) * F.normalize(torch.randn(2, 6, 4, 4), dim=1)
    assert F.cosine_similarity(noisy, features, dim=1).min() > 0.5
    assert reg.raw_loss(noisy, features).item() == 0.0
    # opposite vectors: cos = −1, loss = 1 − 0.5 + 1 = 1.5 at every position
    assert reg.raw_loss(-features, features).item() == pytest.approx(1.5, abs=1e-6)
    assert marginal_cosine_loss(-features, features, 0.0).item() == pytest.approx(2.0, abs=1e-6)


def _brute_force_mdms(z, f, margin):
    n, _, h, w = z.shape
    total, count = 0.0, 0
    for i in range(n):
        zs = z[i].reshape(z.shape[1], -1).T.double()
        fs = f[i].reshape(f.shape[1], -1).T.double()
        for p, q in itertools.product(range(h * w), repeat=2):
            cz = torch.dot(zs[p], zs[q]) / (zs[p].norm() * zs[q].norm())
            cf = torch.dot(fs[p], fs[q]) / (fs[p].norm() * fs[q].norm())
            total += max(abs(cz - cf).item() - margin, 0.0)
            count += 1
    return total / count


def test_mdms_is_zero_when_distance_matrices_agree_within_margin_and_matches_brute_force():
    torch.manual_seed(1)
    reg = build_regularizer({"name": "mdms", "adaptive": False}, 5, 5)
    _identity_projector(reg, 5)
    features = torch.randn(2, 5, 3, 3)
    # positive per-position rescaling keeps every cosine: the matrices agree exactly
    scaled = features * torch.rand(2, 1, 3, 3).add(0.5)
    assert reg.raw_loss(scaled, features).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(2, 5, 3, 3)
    for margin in (0.0, 0.25):
        expected = _brute_force_mdms(other, features, margin)
        assert marginal_distance_matrix_loss(other, features, margin).item() == pytest.approx(expected, abs=1e-5)


def test_mcos_plus_mdms_is_the_sum_of_both_terms():
    torch.manual_seed(2)
    both = build_regularizer({"name": "mcos+mdms", "adaptive": False}, 4, 4)
    _identity_projector(both, 4)
    z, f = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    expected = marginal_cosine_loss(z, f, 0.5) + marginal_distance_matrix_loss(z, f, 0.25)
    assert both.raw_loss(z, f).item() == pytest.approx(expected.item(), abs=1e-6)


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    layer = torch.randn(3, 3, requires_grad=True)
    a, b = torch.randn(3, 3), torch.randn(3, 3)
    primary, secondary = (layer * a).sum(), 2 * (layer * b).sum()
    expected = a.norm() / (2 * b.norm() + 1e-4)
    assert adaptive_weight(primary, secondary, layer, 1e8).item() == pytest.approx(expected.item(), rel=1e-5)
    assert adaptive_weight(primary, secondary, layer, 0.01).item() == pytest.approx(0.01)


def test_vf_loss_in_context_applies_adaptive_weight_and_weight():
    torch.manual_seed(3)
    model = build_tokenizer(dict(base_channels=8, latent_channels=4))
    reg = build_regularizer({"name": "mcos", "weight": 0.1}, 4, 6)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    posterior = model.encode(x)
    z = posterior.sample()
    nll = (model.decode(z) - x).abs().sum()
    features = torch.randn(2, 6, 8, 8)
    ctx = RegularizerContext(images=x, posterior=posterior, latents=z, model=model, step=0, nll=nll,
                             teacher_features=features)
    loss = reg.loss(ctx)
    raw = reg.raw_loss(z, features)
    grad_nll = torch.autograd.grad(nll, model.encoder_last_layer(), retain_graph=True)[0]
    grad_vf = torch.autograd.grad(raw, model.encoder_last_layer(), retain_graph=True)[0]
    factor = grad_nll.norm() / (grad_vf.norm() + 1e-4)
    assert loss.item() == pytest.approx((0.1 * factor * raw).item(), rel=1e-4)


def test_repa_is_negative_mean_cosine_of_the_mlp_projection():
    torch.manual_seed(4)
    reg = build_regularizer({"name": "repa", "hidden": 16}, 4, 6)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in reg.projector) == 3
    z, f = torch.randn(2, 4, 3, 3), torch.randn(2, 6, 3, 3)
    projected = reg.projector(z)
    cosines = [F.cosine_similarity(projected[n, :, i, j], f[n, :, i, j], dim=0).item()
               for n in range(2) for i in range(3) for j in range(3)]
    assert reg.raw_loss(z, f).item() == pytest.approx(-np.mean(cosines), abs=1e-6)


def _brute_force_local_correlation(mode):
    m = mode.double().numpy()
    n, c, h, w = m.shape
    mean = m.mean(axis=(0, 2, 3), keepdims=True)
    std = m.transpose(1, 0, 2, 3).reshape(c, -1).std(axis=1, ddof=1).reshape(1, c, 1, 1)
    s = (m - mean) / (std + 1e-6)
    values = []
    for i in range(n):
        for r in range(0, h - h % 2, 2):
            for col in range(0, w - w % 2, 2):
                vectors = [s[i, :, r + a, col + b] for a in range(2) for b in range(2)]
                corr = np.corrcoef(np.stack(vectors))
                values += [corr[p, q] for p in range(4) for q in range(p + 1, 4)]
    return float(np.mean(values))


def test_local_correlation_matches_brute_force_and_lcr_is_zero_above_threshold():
    torch.manual_seed(5)
    mode = torch.randn(3, 6, 4, 5)  # odd width: the last column is dropped
    assert average_local_correlation(mode).item() == pytest.approx(_brute_force_local_correlation(mode), abs=1e-5)
    reg = build_regularizer({"name": "lcr", "threshold": 0.75}, 6)
    # latents constant inside each 2×2 window: every local correlation is 1 > 0.75
    smooth = torch.randn(2, 6, 2, 2).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert average_local_correlation(smooth).item() == pytest.approx(1.0, abs=1e-5)
    assert reg.raw_loss(smooth).item() == 0.0
    correlation = average_local_correlation(mode).item()
    assert reg.raw_loss(mode).item() == pytest.approx(max(0.75 - correlation, 0.0), abs=1e-6)


def test_lmr_masks_the_drawn_fraction_with_the_token_and_never_outside_training():
    torch.manual_seed(6)
    reg = build_regularizer({"name": "lmr", "mask_probabilities": [0.0, 0.0, 1.0]}, 4)
    z = torch.randn(3, 4, 4, 4)
    masked = reg.latents_for_decoding(z, torch.Generator().manual_seed(0))
    mask = reg.last_mask
    assert int(mask.sum()) == math.floor(16 * 0.75)
    # same positions for every image; masked entries are the token, the rest untouched
    for n in range(3):
        assert torch.equal(masked[n][:, mask], reg.mask_token.detach().view(4, 1).expand(4, int(mask.sum())))
        assert torch.equal(masked[n][:, ~mask], z[n][:, ~mask])
    reg.eval()  # encode time / inference: identity
    assert reg.latents_for_decoding(z, torch.Generator().manual_seed(0)) is z
    assert reg.last_mask is None


def test_lmr_ratio_probabilities():
    reg = build_regularizer({"name": "lmr", "mask_probabilities": [0.1, 0.1, 0.1]}, 4)
    generator = torch.Generator().manual_seed(7)
    draws = [reg.draw_ratio(generator) for _ in range(4000)]
    assert np.mean([d == 0.0 for d in draws]) == pytest.approx(0.7, abs=0.03)
    assert np.mean([d == 0.75 for d in draws]) == pytest.approx(0.1, abs=0.02)
    with pytest.raises(DiffusabilityError, match="probabilities"):
        build_regularizer({"name": "lmr", "mask_probabilities": [0.5, 0.5, 0.5]}, 4)


def _encoder_stand_in(images, factor):
    """A linear 'encoder' (average pooling) that commutes with flips and 2× bilinear downscaling."""
    return F.avg_pool2d(images, factor)


@pytest.mark.parametrize("flip", ["horizontal", "vertical", "both"])
def test_eq_flip_pair_matches_the_transform_of_the_image(flip):
    images = torch.randn(2, 3, 16, 16)
    latents = _encoder_stand_in(images, 4)
    t_latents, t_images = flip_pair(latents, images, flip)
    torch.testing.assert_close(t_latents, _encoder_stand_in(t_images, 4), rtol=0, atol=1e-6)
    assert not torch.equal(t_images, images)


def test_eq_scale_pair_matches_the_transform_of_the_image_and_keeps_the_factor():
    images = torch.randn(2, 3, 32, 32)
    latents = _encoder_stand_in(images, 4)
    t_latents, t_images = scale_pair(latents, images, 0.5)
    assert t_latents.shape[-1] == 4 and t_images.shape[-1] == 16
    torch.testing.assert_close(t_latents, _encoder_stand_in(t_images, 4), rtol=0, atol=1e-5)
    for scale in (0.25, 9 / 32, 0.71875, 31 / 32):
        small_latents, small_images = scale_pair(latents, images, scale)
        assert small_images.shape[-1] == 4 * small_latents.shape[-1] == 4 * max(1, round(8 * scale))


def test_eq_loss_runs_the_decoder_on_the_transformed_pair():
    torch.manual_seed(8)
    model = build_tokenizer(dict(base_channels=8, latent_channels=4))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    posterior = model.encode(x)
    z = posterior.sample()
    seen = []

    def nll(reconstruction, target):
        seen.append((reconstruction.shape, target.shape))
        return (reconstruction - target).abs().sum() / reconstruction.shape[0]

    for variant in ("scale", "flip"):
        reg = build_regularizer({"name": "eq", "variant": variant, "probability": 1.0}, 4)
        ctx = RegularizerContext(images=x, posterior=posterior, latents=z, model=model, step=0,
                                 reconstruction_nll=nll, generator=torch.Generator().manual_seed(1))
        assert reg.loss(ctx).item() > 0
        assert seen[-1][0] == seen[-1][1]
    never = build_regularizer({"name": "eq", "probability": 0.0}, 4)
    assert never.loss(RegularizerContext(images=x, posterior=posterior, latents=z, model=model, step=0,
                                         reconstruction_nll=nll)).item() == 0.0
    with pytest.raises(DiffusabilityError, match="variant"):
        build_regularizer({"name": "eq", "variant": "rotate"}, 4)


# ----------------------------------------------------------------------------- pae


def test_pae_refinement_is_a_low_pass_that_keeps_constants_and_smooths_a_checkerboard():
    from diffusability.tokenizers.regularizers.pae import refine_features

    constant = torch.full((2, 3, 4, 4), 2.5)
    assert torch.allclose(refine_features(constant), constant)
    checker = ((torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2).float().expand(1, 1, 4, 4) * 2 - 1
    assert refine_features(checker).abs().max() < checker.abs().max()  # the highest frequency is damped


def test_pae_ssr_is_zero_when_the_latent_has_the_refined_teacher_structure():
    from diffusability.tokenizers.regularizers.pae import refine_features, spatial_structure_loss

    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 6, 4, 4, generator=g)
    refined = refine_features(features)
    scaled = refined * torch.rand(2, 1, 4, 4, generator=g).add(0.5)  # per-token positive scales keep cosines
    assert float(spatial_structure_loss(scaled, features)) < 1e-6
    z = torch.randn(2, 6, 4, 4, generator=g)
    brute = torch.stack([
        (torch.nn.functional.cosine_similarity(z[n].flatten(1)[:, :, None], z[n].flatten(1)[:, None, :], dim=0)
         - torch.nn.functional.cosine_similarity(refined[n].flatten(1)[:, :, None], refined[n].flatten(1)[:, None, :],
                                                 dim=0)).abs().mean() for n in range(2)]).mean()
    assert float(spatial_structure_loss(z, features)) == pytest.approx(float(brute), rel=1e-5)


def test_pae_mcr_vanishes_without_noise_or_for_a_decoder_that_ignores_its_input():
    from diffusability.tokenizers.regularizers.pae import cascaded_latents, manifold_continuity_loss

    g = torch.Generator().manual_seed(1)
    z = torch.randn(3, 2, 4, 4, generator=g)
    identity = lambda latent: latent  # noqa: E731
    constant = lambda latent: torch.zeros_like(latent) + latent.sum() * 0  # noqa: E731
    assert float(manifold_continuity_loss(identity, z, 0.0, 2, g)) == 0.0
    assert float(manifold_continuity_loss(constant, z, 0.5, 2, g)) == 0.0
    cascade = cascaded_latents(z, 0.1, 3, torch.Generator().manual_seed(2))
    assert len(cascade) == 4 and cascade[0] is z
    # each level adds noise of 0.1 × the latent RMS: E|D(z_k) − D(z_{k−1})| = 0.1·rms·√(2/π) for the identity
    big = torch.randn(64, 4, 16, 16, generator=g)
    rms = float(big.pow(2).mean().sqrt())
    value = float(manifold_continuity_loss(identity, big, 0.1, 2, torch.Generator().manual_seed(3)))
    assert value == pytest.approx(0.1 * rms * math.sqrt(2 / math.pi), rel=0.02)


def test_pae_scr_is_zero_for_aligned_projections_and_the_loss_needs_a_teacher():
    from diffusability.tokenizers.regularizers.pae import semantic_consistency_loss

    g = torch.Generator().manual_seed(4)
    features = torch.randn(2, 5, 3, 3, generator=g)
    assert float(semantic_consistency_loss(features * 3.0, features)) < 1e-6
    assert float(semantic_consistency_loss(-features, features)) == pytest.approx(4.0, rel=1e-5)  # 2 + 2
    with pytest.raises(DiffusabilityError, match="needs a teacher"):
        build_regularizer({"name": "pae"}, latent_channels=4, teacher_dim=None)


def test_pae_loss_in_context_is_the_weighted_sum_of_its_terms():
    from diffusability.tokenizers.regularizers.pae import (manifold_continuity_loss, semantic_consistency_loss,
                                                            spatial_structure_loss)

    torch.manual_seed(0)
    model = build_tokenizer({"image_size": 16, "base_channels": 8, "channel_mult": [1, 2], "latent_channels": 3})
    reg = build_regularizer({"name": "pae", "weight": 0.5, "ssr_weight": 2.0, "scr_weight": 0.25, "hidden": 8},
                            latent_channels=3, teacher_dim=6)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    latents = model.encode(images).sample(torch.Generator().manual_seed(5))
    features = torch.randn(2, 6, *latents.shape[-2:])
    context = RegularizerContext(images=images, posterior=None, latents=latents, model=model, step=0,
                                 teacher_features=features, generator=torch.Generator().manual_seed(6))
    value = reg.loss(context)
    expected = 0.5 * (2.0 * spatial_structure_loss(latents, features)
                      + manifold_continuity_loss(model.decode, latents, 0.1, 2, torch.Generator().manual_seed(6))
                      + 0.25 * semantic_consistency_loss(reg.projector(latents), features))
    assert float(value) == pytest.approx(float(expected), rel=1e-5)
    assert set(reg.last_logs) == {"pae_ssr", "pae_mcr", "pae_scr"}
