"""Post-hoc transport efficiency of sampling trajectories — docs/metrics.md §10 (the study's eqs. 10–11, Fig. 10).

A trajectory is the list of sampler states x_{t_0}, …, x_{t_K} (t_0 = noise, t_K = data, K segments) with
segments Δ_k = x_{t_k} − x_{t_{k−1}} taken as flattened vectors. Everything is accumulated in float64 (cosines
in bf16/fp16 are meaningless for nearly parallel segments).
"""

from __future__ import annotations

import torch

from diffusability.errors import require


def trajectory_metrics(trajectory: torch.Tensor, times: torch.Tensor) -> dict:
    """Transport efficiency of sampling trajectories: straightness, efficiency, segment length ratios.

    With segments ``Δ_k = x_{t_k} − x_{t_{k−1}}`` of the flattened sampler states
    (docs/metrics.md §10): local straightness ``S_cos = mean_k cos(Δ_k, Δ_{k+1})`` (needs K ≥ 2,
    else NaN), global efficiency ``S_eff = |x_{t_K} − x_{t_0}| / Σ_k |Δ_k|`` and the per-segment
    length ratio ``ρ_k = |Δ_k| / ((t_k − t_{k−1})·|x_{t_K} − x_{t_0}|)`` (1 on the straight
    constant-speed path). Everything is accumulated in float64.

    Parameters
    ----------
    trajectory : torch.Tensor, shape (K+1, N, ...)
        Sampler states; index 0 is the noise (t_0), index K the data (t_K).
    times : array-like, shape (K+1,)
        Strictly increasing times in this project's convention (t = 0 noise, t = 1 data); a
        sampler that walks t from 1 to 0 must be reversed and mapped t ↦ 1 − t first.

    Returns
    -------
    dict
        ``local_straightness`` (N,), ``global_efficiency`` (N,), ``length_ratio`` (N, K),
        ``segment_start_times`` (K,), and the means over samples ``mean_local_straightness``,
        ``mean_global_efficiency`` (floats) and ``mean_length_ratio`` (K,); tensors are float64.

    Examples
    --------
    One sample that goes right, then up: the two segments are orthogonal.

    >>> import torch
    >>> from diffusability.metrics import trajectory_metrics
    >>> path = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]], [[1.0, 1.0]]])      # (K+1, N, D) = (3, 1, 2)
    >>> result = trajectory_metrics(path, torch.tensor([0.0, 0.5, 1.0]))
    >>> result["mean_local_straightness"], round(result["mean_global_efficiency"], 4)
    (0.0, 0.7071)
    >>> result["length_ratio"]
    tensor([[1.4142, 1.4142]], dtype=torch.float64)
    """
    require(isinstance(trajectory, torch.Tensor) and trajectory.ndim >= 2,
            "trajectory: expected a tensor (K+1, N, ...) of sampler states")
    times = torch.as_tensor(times).to(device=trajectory.device, dtype=torch.float64).reshape(-1)
    steps = trajectory.shape[0] - 1
    require(steps >= 1, f"trajectory: expected at least 2 states (K ≥ 1 segments), got {trajectory.shape[0]}")
    require(times.shape[0] == steps + 1,
            f"times: expected {steps + 1} values (one per trajectory state), got {times.shape[0]}")
    dt = times[1:] - times[:-1]
    require(bool((dt > 0).all()),
            "times: expected strictly increasing times (t = 0 noise → t = 1 data); for a sampler that walks "
            "t from 1 to 0 reverse the trajectory and map t ↦ 1 − t first")
    states = trajectory.reshape(steps + 1, trajectory.shape[1], -1).to(torch.float64)
    require(bool(torch.isfinite(states).all()), "trajectory: contains NaN or Inf")
    segments = states[1:] - states[:-1]                                   # (K, N, D)
    lengths = segments.norm(dim=-1)                                       # (K, N)
    displacement = (states[-1] - states[0]).norm(dim=-1)                  # (N,)
    require(bool((displacement > 0).all()),
            "trajectory: a sample ends where it starts (zero displacement); efficiency is undefined")
    if steps >= 2:
        dots = (segments[:-1] * segments[1:]).sum(-1)
        cosines = dots / (lengths[:-1] * lengths[1:]).clamp_min(torch.finfo(torch.float64).tiny)
        straightness = cosines.mean(0)
    else:
        straightness = torch.full_like(displacement, float("nan"))
    efficiency = displacement / lengths.sum(0)
    ratio = (lengths / (dt[:, None] * displacement[None])).T               # (N, K)
    return {
        "local_straightness": straightness, "global_efficiency": efficiency, "length_ratio": ratio,
        "segment_start_times": times[:-1],
        "mean_local_straightness": float(straightness.mean()),
        "mean_global_efficiency": float(efficiency.mean()),
        "mean_length_ratio": ratio.mean(0),
    }
