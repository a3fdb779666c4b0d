"""LDS, CDS, SRSS, RMSC against brute-force loops over pairs with the docs/metrics.md §3 definitions."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from diffusability.errors import DiffusabilityError
from diffusability.metrics.spatial import (correlation_decay_slope, local_distant_similarity,
                                           rms_spatial_contrast, semantic_region_self_similarity)


def unit(v):
    return v / max(np.linalg.norm(v), 1e-8)


def cos_grid(image):
    """Brute force: dict of (h1,w1,h2,w2) -> cosine for one (C,H,W) numpy image."""
    c, h, w = image.shape
    out = {}
    for h1 in range(h):
        for w1 in range(w):
            for h2 in range(h):
                for w2 in range(w):
                    out[h1, w1, h2, w2] = float(unit(image[:, h1, w1]) @ unit(image[:, h2, w2]))
    return out


def brute_lds(image, far_dist):
    cos = cos_grid(image)
    near = [v for (a, b, c, d), v in cos.items() if abs(a - c) + abs(b - d) == 1 and (a, b) < (c, d)]
    far = [v for (a, b, c, d), v in cos.items() if abs(a - c) + abs(b - d) >= far_dist]
    return np.mean(near) - np.mean(far)


def brute_cds(image, dmax):
    cos = cos_grid(image)
    ds = np.arange(1, dmax + 1)
    s = np.array([np.mean([v for (a, b, c, d), v in cos.items() if abs(a - c) + abs(b - d) == k]) for k in ds])
    slope = np.polyfit(ds, s, 1)[0]
    return -slope


def brute_srss(image, mask, d_pos, d_neg):
    cos = cos_grid(image)
    _, h, w = image.shape
    diffs = []
    for a in range(h):
        for b in range(w):
            if not mask[a, b]:
                continue
            pos = [cos[a, b, c, d] for c in range(h) for d in range(w)
                   if mask[c, d] and 1 <= abs(a - c) + abs(b - d) <= d_pos]
            neg = [cos[a, b, c, d] for c in range(h) for d in range(w)
                   if not mask[c, d] and abs(a - c) + abs(b - d) >= d_neg]
            if pos and neg:
                diffs.append(np.mean(pos) - np.mean(neg))
    return np.mean(diffs) if diffs else math.nan


def brute_rmsc(image):
    c, h, w = image.shape
    toks = np.stack([unit(image[:, a, b]) for a in range(h) for b in range(w)])
    return math.sqrt(((toks - toks.mean(0)) ** 2).sum(1).mean())


@pytest.fixture
def small():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 4, 6, 7, generator=g, dtype=torch.float64)
    # a smooth component so near/far cosines differ
    smooth = torch.nn.functional.avg_pool2d(torch.randn(5, 4, 8, 9, generator=g, dtype=torch.float64), 3, 1)
    return (base + 3 * smooth).float()


def test_lds_matches_brute_force(small):
    result = local_distant_similarity(small, far_dist=4)
    expected = [brute_lds(img.double().numpy(), 4) for img in small]
    np.testing.assert_allclose(result["per_image"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert result["value"] == pytest.approx(np.mean(expected), abs=1e-6)
    assert result["n_used"] == 5


def test_cds_matches_brute_force(small):
    result = correlation_decay_slope(small, dmax=5)
    expected = [brute_cds(img.double().numpy(), 5) for img in small]
    np.testing.assert_allclose(result["per_image"].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_srss_matches_brute_force_and_filters(small):
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(5, 6, 7, generator=g) > 0.5
    masks[3] = False  # no foreground: excluded
    masks[3, 0, 0] = True
    result = semantic_region_self_similarity(small, masks, d_pos=1, d_neg=3, min_fg=2, min_bg=2)
    expected = [brute_srss(img.double().numpy(), m.numpy(), 1, 3) for img, m in zip(small, masks)]
    expected[3] = math.nan
    np.testing.assert_allclose(result["per_image"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert result["n_used"] == 4 and result["n_excluded"] == 1
    assert result["value"] == pytest.approx(np.nanmean(expected), abs=1e-6)


def test_srss_with_d_pos_two(small):
    masks = torch.zeros(5, 6, 7, dtype=torch.bool)
    masks[:, :3, :4] = True
    result = semantic_region_self_similarity(small, masks, d_pos=2, d_neg=4, min_fg=1, min_bg=1)
    expected = [brute_srss(img.double().numpy(), m.numpy(), 2, 4) for img, m in zip(small, masks)]
    np.testing.assert_allclose(result["per_image"].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_srss_refuses_when_no_image_passes(small):
    masks = torch.ones(5, 6, 7, dtype=torch.bool)
    with pytest.raises(DiffusabilityError, match="min_fg"):
        semantic_region_self_similarity(small, masks)


def test_rmsc_matches_brute_force_and_closed_form(small):
    result = rms_spatial_contrast(small)
    expected = [brute_rmsc(img.double().numpy()) for img in small]
    np.testing.assert_allclose(result["per_image"].numpy(), expected, rtol=1e-6)
    # identical tokens have zero contrast
    constant_direction = torch.ones(2, 3, 4, 4) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    assert rms_spatial_contrast(constant_direction)["value"] == pytest.approx(0.0, abs=1e-6)


def test_lds_perfect_checkerboard():
    """Tokens alternating between +v and −v: d=1 cos = −1, d even cos = +1, odd −1."""
    h = w = 8
    sign = torch.tensor([[(-1.0) ** (a + b) for b in range(w)] for a in range(h)])
    latents = sign.view(1, 1, h, w) * torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)
    # far mean weights by the number of ordered pairs at each distance
    counts = {}
    for a in range(h * w):
        for b in range(h * w):
            d = abs(a // w - b // w) + abs(a % w - b % w)
            counts[d] = counts.get(d, 0) + 1
    far_mean = sum(counts[d] * (-1.0) ** d for d in counts if d >= 6) / sum(counts[d] for d in counts if d >= 6)
    assert local_distant_similarity(latents)["value"] == pytest.approx(-1.0 - far_mean, abs=1e-6)


def test_errors_name_input():
    with pytest.raises(DiffusabilityError, match="latents"):
        local_distant_similarity(torch.randn(2, 3, 4))
    with pytest.raises(DiffusabilityError, match="far_dist"):
        local_distant_similarity(torch.randn(2, 3, 2, 2), far_dist=6)
    with pytest.raises(DiffusabilityError, match="dmax"):
        correlation_decay_slope(torch.randn(2, 3, 3, 3), dmax=8)
    with pytest.raises(DiffusabilityError, match="NaN"):
        rms_spatial_contrast(torch.full((1, 2, 3, 3), float("nan")))


def random_orthogonal(c, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((c, c)))
    return torch.from_numpy(q)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 100.0))
def test_invariant_to_channel_rotation_and_positive_scale(seed, scale):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(3, 5, 9, 9, generator=g, dtype=torch.float64)
    q = random_orthogonal(5, seed)
    rotated = (torch.einsum("dc,nchw->ndhw", q, z) * scale).float()
    z = z.float()
    for fn in (local_distant_similarity, correlation_decay_slope, rms_spatial_contrast):
        a, b = fn(z)["value"], fn(rotated)["value"]
        assert a == pytest.approx(b, abs=2e-5), fn.__name__
