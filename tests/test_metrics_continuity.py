"""iFID building blocks: cosine top-K, slerp closed forms, neighbour choice, FD composition."""

import math

import numpy as np
import pytest
import torch

from diffusability.errors import DiffusabilityError
from diffusability.metrics.continuity import cosine_top_k, interpolated_fd, interpolated_latents, slerp


def test_cosine_top_k_matches_argsort_and_excludes_self():
    g = torch.Generator().manual_seed(0)
    pool = torch.randn(40, 6, generator=g)
    queries = torch.randn(9, 6, generator=g)
    got = cosine_top_k(queries, pool, 4, chunk=4)
    cos = (queries / queries.norm(dim=1, keepdim=True)) @ (pool / pool.norm(dim=1, keepdim=True)).T
    expected = np.argsort(-cos.double().numpy(), axis=1)[:, :4]
    np.testing.assert_array_equal(np.sort(got.numpy(), 1), np.sort(expected, 1))
    own = cosine_top_k(pool, pool, 3, exclude_self=True, chunk=7)
    assert not (own == torch.arange(40)[:, None]).any()
    with pytest.raises(DiffusabilityError, match="k="):
        cosine_top_k(pool, pool, 40, exclude_self=True)


def test_slerp_closed_forms():
    a = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 1.0], [0.0, 2.0], [2.0, 2.0]], dtype=torch.float64)
    out = slerp(a, b, 0.5)
    s = math.sin(math.pi / 4) / math.sin(math.pi / 2)
    np.testing.assert_allclose(out[0].numpy(), [s, s], atol=1e-12)       # unit circle midpoint
    np.testing.assert_allclose(out[1].numpy(), [2 * s, 2 * s], atol=1e-12)
    np.testing.assert_allclose(out[2].numpy(), [1.5, 1.5], atol=1e-6)    # parallel: linear fallback
    np.testing.assert_allclose(slerp(a, b, 0.0).numpy(), a.numpy(), atol=1e-12)
    np.testing.assert_allclose(slerp(a[:2], b[:2], 1.0).numpy(), b[:2].numpy(), atol=1e-12)


def test_pick_follows_softmax_of_mean_squared_difference():
    # query 0; candidates 1 and 2 have equal cosine, but 2 is 10× longer: softmax(−msd) → pick 1
    pool = torch.tensor([[1.0, 0.0], [1.0, 0.05], [10.0, 0.5], [-1.0, 0.0]])
    out, details = interpolated_latents(pool[:1], pool, k=3, alpha=0.5, exclude_self=False, return_details=True)
    assert int(details["neighbor"][0]) in (0, 1)  # never 2: its msd ≈ 40 makes p ≈ e^-40
    # equal msd: the pick is near-uniform and deterministic for a seed
    same = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]]).repeat(50, 1)
    queries = torch.zeros(200, 2) + torch.tensor([1e-3, 1e-3])
    a = interpolated_latents(queries, same, k=2, seed=3)
    b = interpolated_latents(queries, same, k=2, seed=3)
    assert torch.equal(a, b)


def test_interpolated_fd_is_zero_at_alpha_zero_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(60, 2, 2, 2, generator=g)
    pool = torch.randn(80, 2, 2, 2, generator=g)

    def decode(z):
        return z * 2

    def features(x):
        return x.reshape(x.shape[0], -1)

    reference = features(decode(queries))
    zero = interpolated_fd(decode, features, queries, pool, reference, k=5, alpha=0.0)
    assert zero["value"] == pytest.approx(0.0, abs=1e-8)
    half = interpolated_fd(decode, features, queries, pool, reference, k=5, alpha=0.5, batch_size=7)
    assert half["value"] > 0.1
    assert 0 <= half["mean_choice_entropy"] <= math.log(5) + 1e-9
