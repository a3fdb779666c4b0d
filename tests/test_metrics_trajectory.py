"""Tests for the transport-efficiency metrics of sampling trajectories (docs/metrics.md §10)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from diffusability.errors import DiffusabilityError
from diffusability.metrics.trajectory import trajectory_metrics


def straight_path(times: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """x_t = (1−t)·start + t·end at the given times: (K+1, N, ...)."""
    shape = (-1,) + (1,) * start.ndim
    t = times.reshape(shape).to(start.dtype)
    return (1 - t) * start[None] + t * end[None]


@pytest.mark.parametrize("times", [torch.linspace(0, 1, 51, dtype=torch.float64),
                                   torch.tensor([0.0, 0.05, 0.2, 0.5, 0.9, 1.0], dtype=torch.float64)])
def test_straight_constant_speed_path_is_perfect(times):
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(4, 3, 2, 2, dtype=torch.float64, generator=gen)
    end = torch.randn(4, 3, 2, 2, dtype=torch.float64, generator=gen)
    out = trajectory_metrics(straight_path(times, start, end), times)
    torch.testing.assert_close(out["local_straightness"], torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(out["global_efficiency"], torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(out["length_ratio"], torch.ones(4, len(times) - 1, dtype=torch.float64))
    assert out["mean_global_efficiency"] == pytest.approx(1.0)
    torch.testing.assert_close(out["segment_start_times"], times[:-1].double())


def test_hand_built_zigzag():
    # Path (0,0) → (1,0) → (1,1) → (2,1) → (3,2): segments (1,0), (0,1), (1,0), (1,1).
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [2.0, 1.0], [3.0, 2.0]])
    times = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    out = trajectory_metrics(points[:, None], times)
    expected_cos = (0.0 + 0.0 + 1 / math.sqrt(2)) / 3
    assert float(out["local_straightness"][0]) == pytest.approx(expected_cos, rel=1e-12)
    total_length = 3 + math.sqrt(2)
    assert float(out["global_efficiency"][0]) == pytest.approx(math.sqrt(13) / total_length, rel=1e-12)
    expected_ratio = torch.tensor([1, 1, 1, math.sqrt(2)], dtype=torch.float64) / (0.25 * math.sqrt(13))
    torch.testing.assert_close(out["length_ratio"][0], expected_ratio)


def test_reversal_gives_cosine_minus_one():
    points = torch.tensor([[0.0], [2.0], [1.0]])
    out = trajectory_metrics(points[:, None], torch.tensor([0.0, 0.5, 1.0]))
    assert float(out["local_straightness"][0]) == pytest.approx(-1.0)
    assert float(out["global_efficiency"][0]) == pytest.approx(1 / 3)


@given(st.integers(min_value=2, max_value=12), st.integers(min_value=0, max_value=10_000))
@settings(max_examples=30, deadline=None)
def test_step_weighted_ratios_sum_to_inverse_efficiency(steps, seed):
    gen = torch.Generator().manual_seed(seed)
    trajectory = torch.randn(steps + 1, 3, 5, generator=gen)
    times = torch.sort(torch.rand(steps + 1, generator=gen)).values
    times[0], times[-1] = 0.0, 1.0
    times = torch.cummax(times, 0).values + torch.arange(steps + 1) * 1e-3     # strictly increasing
    out = trajectory_metrics(trajectory, times)
    dt = (times[1:] - times[:-1]).double()
    torch.testing.assert_close(out["length_ratio"] @ dt, 1 / out["global_efficiency"])
    assert bool((out["global_efficiency"] <= 1 + 1e-12).all())
    assert bool((out["local_straightness"].abs() <= 1 + 1e-12).all())


def test_low_precision_input_is_accumulated_in_float64():
    times = torch.linspace(0, 1, 11)
    start, end = torch.randn(2, 64), torch.randn(2, 64)
    out = trajectory_metrics(straight_path(times, start, end).to(torch.bfloat16), times)
    assert out["local_straightness"].dtype == torch.float64


@pytest.mark.parametrize("case, pattern", [
    ("descending", "increasing"), ("length", "times"), ("single", "at least 2"), ("nan", "NaN"),
    ("static", "zero displacement"),
])
def test_bad_inputs(case, pattern):
    times = torch.linspace(0, 1, 5)
    trajectory = torch.randn(5, 2, 3)
    if case == "descending":
        times = times.flip(0)
    elif case == "length":
        times = times[:-1]
    elif case == "single":
        trajectory, times = trajectory[:1], times[:1]
    elif case == "nan":
        trajectory[2, 0, 0] = float("nan")
    elif case == "static":
        trajectory[-1] = trajectory[0]
    with pytest.raises(DiffusabilityError, match=pattern):
        trajectory_metrics(trajectory, times)
