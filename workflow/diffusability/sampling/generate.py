"""Batched generation of latents for a list of sample indices (no file I/O).

Noise and label of sample i come from (seed, i) only, so the output for index i is the same for
any batch size or sharding of the indices over processes (up to float round-off of batched matmuls;
bit-exact when the same indices form the same batch, which the sharded ``sample`` command ensures).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from ..progress import progress
from .euler import euler_sample
from .noise import sample_labels, sample_noise


def sample_batch(model, seed: int, indices: Sequence[int], num_classes: int, latent_shape: Sequence[int],
                 device: str | torch.device = "cpu", trajectory_indices: Iterable[int] = (),
                 **sampler: Any) -> dict[str, torch.Tensor]:
    """Sample the latents of ``indices`` as ONE batch (one network call per Euler step).

    Returns {"latents": (n, C, H, W) float32 CPU, "labels": (n,) int64, "index": (n,) int64} and, if
    any of ``trajectory_indices`` is among ``indices``, "trajectory" (K+1, m, C, H, W),
    "trajectory_index" (m,) and "times" (K+1,) for those samples.
    """
    indices = [int(i) for i in indices]
    wanted = set(int(i) for i in trajectory_indices)
    labels = sample_labels(seed, indices, num_classes)
    noise = sample_noise(seed, indices, latent_shape).to(device)
    record = any(i in wanted for i in indices)
    result = euler_sample(model, noise, labels.to(device), record_trajectory=record, **sampler)
    out = {"latents": result.latents.float().cpu(), "labels": labels,
           "index": torch.tensor(indices, dtype=torch.int64)}
    if record:
        keep = torch.tensor([i in wanted for i in indices])
        out["trajectory"] = result.trajectory[:, keep]
        out["trajectory_index"] = torch.tensor([i for i in indices if i in wanted], dtype=torch.int64)
        out["times"] = result.times
    return out


def generate_latents(model, seed: int, indices: Sequence[int], num_classes: int, latent_shape: Sequence[int],
                     batch_size: int, device: str | torch.device = "cpu", trajectory_indices: Iterable[int] = (),
                     desc: str = "sample", **sampler: Any) -> dict[str, torch.Tensor]:
    """Sample latents for ``indices`` in batches of ``batch_size`` (see :func:`sample_batch`).

    Returns {"latents": (n, C, H, W) float32 CPU, "labels": (n,) int64} and, if any of
    ``trajectory_indices`` is among ``indices``, "trajectory" (K+1, m, C, H, W), "trajectory_index"
    (m,) and "times" (K+1,) for those samples. ``sampler`` goes to :func:`euler_sample`.
    """
    indices = [int(i) for i in indices]
    wanted = list(trajectory_indices)
    latents, trajectories, trajectory_index, times = [], [], [], None
    starts = range(0, len(indices), batch_size)
    for start in progress(starts, total=len(starts), desc=desc, unit="batch"):
        part = sample_batch(model, seed, indices[start:start + batch_size], num_classes, latent_shape,
                            device=device, trajectory_indices=wanted, **sampler)
        latents.append(part["latents"])
        if "trajectory" in part:
            trajectories.append(part["trajectory"])
            trajectory_index.append(part["trajectory_index"])
            times = part["times"]
    out = {"latents": torch.cat(latents) if latents else torch.empty((0, *latent_shape)),
           "labels": sample_labels(seed, indices, num_classes)}
    if trajectories:
        out["trajectory"] = torch.cat(trajectories, dim=1)
        out["trajectory_index"] = torch.cat(trajectory_index)
        out["times"] = times
    return out
