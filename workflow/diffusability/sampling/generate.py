"""Batched generation of latents for a list of sample indices (no file I/O).

Noise and label of sample i come from (seed, i) only, so the output for index i is the same for
any batch size or sharding of the indices over processes (up to float round-off of batched matmuls).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from ..progress import progress
from .euler import euler_sample
from .noise import sample_labels, sample_noise


def generate_latents(model, seed: int, indices: Sequence[int], num_classes: int, latent_shape: Sequence[int],
                     batch_size: int, device: str | torch.device = "cpu", trajectory_indices: Iterable[int] = (),
                     desc: str = "sample", **sampler: Any) -> dict[str, torch.Tensor]:
    """Sample latents for ``indices`` in batches of ``batch_size``.

    Returns {"latents": (n, C, H, W) float32 CPU, "labels": (n,) int64} and, if any of
    ``trajectory_indices`` is among ``indices``, "trajectory" (K+1, m, C, H, W), "trajectory_index"
    (m,) and "times" (K+1,) for those samples. ``sampler`` goes to :func:`euler_sample`.
    """
    indices = [int(i) for i in indices]
    wanted = set(int(i) for i in trajectory_indices)
    labels = sample_labels(seed, indices, num_classes)
    latents, trajectories, trajectory_index, times = [], [], [], None
    starts = range(0, len(indices), batch_size)
    for start in progress(starts, total=len(starts), desc=desc, unit="batch"):
        batch = indices[start:start + batch_size]
        noise = sample_noise(seed, batch, latent_shape).to(device)
        batch_labels = labels[start:start + batch_size].to(device)
        record = any(i in wanted for i in batch)
        result = euler_sample(model, noise, batch_labels, record_trajectory=record, **sampler)
        latents.append(result.latents.float().cpu())
        times = result.times
        if record:
            keep = torch.tensor([i in wanted for i in batch])
            trajectories.append(result.trajectory[:, keep])
            trajectory_index.extend(i for i in batch if i in wanted)
    out = {"latents": torch.cat(latents) if latents else torch.empty((0, *latent_shape)), "labels": labels}
    if trajectories:
        out["trajectory"] = torch.cat(trajectories, dim=1)
        out["trajectory_index"] = torch.tensor(trajectory_index, dtype=torch.int64)
        out["times"] = times
    return out
