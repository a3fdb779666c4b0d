"""Euler ODE sampler for flow-matching velocity models, with classifier-free guidance.

Convention: t = 0 noise, t = 1 data; x_{k+1} = x_k + (t_{k+1} − t_k)·v̂(x_k, t_k, y).
"50 steps" means 50 Euler updates = 50 network evaluations on a grid of 51 points from 0 to 1
(torchdiffeq-based SiT/LightningDiT samplers take 49 updates for "50"; REPA takes 50). The model
is never evaluated at t = 1. Guidance u + w·(c − u) applies to all channels by default, with
the conditional and null-label passes batched into one forward.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import require


class EulerResult(NamedTuple):
    """latents (N, C, H, W); trajectory (K+1, N, C, H, W) on the CPU or None; times (K+1,) float64."""

    latents: torch.Tensor
    trajectory: torch.Tensor | None
    times: torch.Tensor


def time_grid(num_steps: int, timestep_shift: float | None = None) -> torch.Tensor:
    """num_steps + 1 times (float64) from 0 to 1: uniform, or LightningDiT-shifted t' = s·t / (1 + (s − 1)·t).

    A shift s < 1 (LightningDiT uses 0.3) packs the steps near the noise end t = 0.
    """
    require(isinstance(num_steps, int) and num_steps > 0, f"num_steps must be a positive integer, got {num_steps!r}")
    grid = torch.linspace(0.0, 1.0, num_steps + 1, dtype=torch.float64)
    if timestep_shift is not None:
        require(timestep_shift > 0, f"timestep_shift must be positive, got {timestep_shift!r}")
        grid = timestep_shift * grid / (1 + (timestep_shift - 1) * grid)
        grid[-1] = 1.0  # s / (1 + s − 1) rounds to 1 − ε; the integration must end exactly at the data
    return grid


def _interval(cfg_interval) -> tuple[float, float] | None:
    if cfg_interval is None:
        return None
    if isinstance(cfg_interval, (int, float)):
        return float(cfg_interval), 1.0
    start, end = cfg_interval
    return float(start), float(end)


def guided_velocity(model, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float,
                    guidance_channels: int | None = None) -> torch.Tensor:
    """One network call: conditional velocity when cfg_scale == 1, else batched cond + null guidance."""
    if cfg_scale == 1.0:
        return model(x, t, y)  # u + 1·(c − u) = c: skip the null pass
    return model.forward_with_cfg(x, t, y, cfg_scale, guidance_channels=guidance_channels)


@torch.no_grad()
def euler_sample(model, noise: torch.Tensor, labels: torch.Tensor, num_steps: int = 50, cfg_scale: float = 1.0,
                 guidance_channels: int | None = None, timestep_shift: float | None = None,
                 cfg_interval: float | tuple[float, float] | None = None,
                 record_trajectory: bool = False) -> EulerResult:
    """Integrate dx/dt = v̂(x, t, y) from noise (N, C, H, W) at t = 0 to t = 1 in exactly ``num_steps`` Euler updates.

    labels (N,) int64. ``cfg_scale`` w: guided velocity u + w·(c − u) (w = 1: conditional only).
    ``guidance_channels``: None guides all channels, k only the first k (DiT legacy: 3).
    ``timestep_shift``: see :func:`time_grid`. ``cfg_interval``: a start time, or (start, end):
    guidance only where start ≤ t ≤ end (LightningDiT: start 0.11, no guidance near noise).
    Runs in float32 with autocast off (FID is sensitive to bf16 sampling).
    """
    require(noise.dim() == 4, f"noise must have shape (N, C, H, W), got {tuple(noise.shape)}")
    require(labels.shape == (noise.shape[0],), f"labels must have shape ({noise.shape[0]},), got {tuple(labels.shape)}")
    interval = _interval(cfg_interval)
    times = time_grid(num_steps, timestep_shift)
    x = noise.float()
    trajectory = [x.cpu().clone()] if record_trajectory else None
    device_type = x.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        for k in range(num_steps):
            t_now, t_next = float(times[k]), float(times[k + 1])
            guide = interval is None or interval[0] <= t_now <= interval[1]
            t_batch = torch.full((x.shape[0],), t_now, dtype=torch.float32, device=x.device)
            v = guided_velocity(model, x, t_batch, labels, cfg_scale if guide else 1.0, guidance_channels)
            x = x + (t_next - t_now) * v.float()
            if trajectory is not None:
                trajectory.append(x.cpu().clone())
    stacked = torch.stack(trajectory) if trajectory is not None else None
    return EulerResult(x, stacked, times)
