"""Euler sampler: exact step count, closed-form solutions, CFG and its interval, shift, trajectories."""

import pytest
import torch

from diffusability.errors import DiffusabilityError
from diffusability.sampling.euler import euler_sample, time_grid


class LinearToyVelocity(torch.nn.Module):
    """v(x, t, y) = lam·x + offsets[y] (label ``null`` = last row); counts network calls."""

    def __init__(self, lam=0.0, offsets=None, time_weight=0.0):
        super().__init__()
        self.lam, self.time_weight = lam, time_weight
        self.offsets = offsets if offsets is not None else torch.zeros(3)
        self.calls = 0
        self.null_label = len(self.offsets) - 1
        self.times_seen = []

    def forward(self, x, t, y):
        self.calls += 1
        self.times_seen.append(float(t[0]))
        return self.lam * x + self.offsets[y].reshape(-1, 1, 1, 1) + self.time_weight * t.reshape(-1, 1, 1, 1)

    def forward_with_cfg(self, x, t, y, cfg_scale, guidance_channels=None):
        n = x.shape[0]
        out = self.forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, self.null_label)]))
        cond, uncond = out[:n], out[n:]
        guided = uncond + cfg_scale * (cond - uncond)
        if guidance_channels is not None:
            guided = torch.cat([guided[:, :guidance_channels], cond[:, guidance_channels:]], dim=1)
        return guided


@pytest.mark.parametrize("num_steps", [1, 7, 50])
def test_exactly_num_steps_calls_and_the_exponential_closed_form(num_steps):
    lam = -0.7
    model = LinearToyVelocity(lam=lam)
    noise = torch.randn(4, 2, 3, 3, dtype=torch.float64).float()
    result = euler_sample(model, noise, torch.zeros(4, dtype=torch.long), num_steps=num_steps)
    assert model.calls == num_steps
    expected = (1 + lam / num_steps) ** num_steps * noise.double()
    assert torch.allclose(result.latents.double(), expected, atol=1e-5)
    assert max(model.times_seen) < 1.0  # never evaluated at t = 1


def test_time_dependent_velocity_is_evaluated_at_left_endpoints():
    k = 10
    model = LinearToyVelocity(time_weight=1.0)
    noise = torch.zeros(1, 1, 1, 1)
    out = euler_sample(model, noise, torch.zeros(1, dtype=torch.long), num_steps=k).latents
    assert float(out) == pytest.approx((k - 1) / (2 * k), abs=1e-6)  # Σ (i/k)·(1/k), i = 0..k−1


def test_cfg_on_all_channels_with_one_batched_call_per_step():
    offsets = torch.tensor([1.0, 3.0, 0.5])  # class 0, class 1, null
    model = LinearToyVelocity(offsets=offsets)
    noise = torch.zeros(2, 2, 1, 1)
    labels = torch.tensor([0, 1])
    out = euler_sample(model, noise, labels, num_steps=8, cfg_scale=2.0).latents
    assert model.calls == 8
    expected = offsets[-1] + 2.0 * (offsets[labels] - offsets[-1])  # constant velocity, Σ Δt = 1
    assert torch.allclose(out, expected.reshape(2, 1, 1, 1).expand(2, 2, 1, 1), atol=1e-6)
    legacy = euler_sample(model, noise, labels, num_steps=8, cfg_scale=2.0, guidance_channels=1).latents
    assert torch.allclose(legacy[:, 0], out[:, 0]) and torch.allclose(legacy[:, 1].flatten(), offsets[labels])


def test_cfg_interval_skips_guidance_near_noise():
    offsets = torch.tensor([1.0, 0.0])
    model = LinearToyVelocity(offsets=offsets)
    num_steps, start, w = 10, 0.25, 3.0
    out = euler_sample(model, torch.zeros(1, 1, 1, 1), torch.tensor([0]), num_steps=num_steps, cfg_scale=w,
                       cfg_interval=start).latents
    unguided_steps = sum(1 for i in range(num_steps) if i / num_steps < start)  # t = 0, 0.1, 0.2
    expected = (unguided_steps * 1.0 + (num_steps - unguided_steps) * w * 1.0) / num_steps
    assert float(out) == pytest.approx(expected, abs=1e-6)


def test_timestep_shift_grid_and_exact_linear_solution():
    s = 0.3
    grid = time_grid(5, s)
    uniform = torch.linspace(0, 1, 6, dtype=torch.float64)
    assert torch.allclose(grid, s * uniform / (1 + (s - 1) * uniform))
    assert grid[0] == 0 and grid[-1] == 1 and bool((grid.diff() > 0).all())
    lam = 0.4
    model = LinearToyVelocity(lam=lam)
    noise = torch.ones(1, 1, 1, 1)
    out = euler_sample(model, noise, torch.tensor([0]), num_steps=5, timestep_shift=s).latents
    assert float(out) == pytest.approx(float(torch.prod(1 + lam * grid.diff())), rel=1e-6)


def test_trajectory_recording():
    model = LinearToyVelocity(lam=-0.5)
    noise = torch.randn(3, 2, 2, 2)
    result = euler_sample(model, noise, torch.zeros(3, dtype=torch.long), num_steps=4, record_trajectory=True)
    assert result.trajectory.shape == (5, 3, 2, 2, 2)
    assert torch.equal(result.trajectory[0], noise) and torch.equal(result.trajectory[-1], result.latents)
    assert result.times.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    steps = result.trajectory.diff(dim=0)
    assert torch.allclose(steps[1], 0.25 * -0.5 * result.trajectory[1])  # Δ_k = h·v(x_{k−1})


def test_bad_sampler_input():
    model = LinearToyVelocity()
    with pytest.raises(DiffusabilityError, match="num_steps"):
        euler_sample(model, torch.zeros(1, 1, 1, 1), torch.zeros(1, dtype=torch.long), num_steps=0)
    with pytest.raises(DiffusabilityError, match="labels"):
        euler_sample(model, torch.zeros(2, 1, 1, 1), torch.zeros(3, dtype=torch.long))
