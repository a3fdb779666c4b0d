"""Per-sample randomness: the noise and label of sample i depend only on (seed, i).

So the same images come out whatever the batch size, the number of processes or the order in
which shards are processed (the usual ``seed·world + rank`` scheme does not have this property).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from ..errors import require
from ..seeding import torch_generator


def _as_index_list(indices: Iterable[int]) -> list[int]:
    out = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
    require(all(i >= 0 for i in out), "sample indices must be non-negative")
    return out


def sample_noise(seed: int, indices: Iterable[int], shape: Sequence[int]) -> torch.Tensor:
    """Standard normal noise (len(indices), *shape) float32; row k is a function of (seed, indices[k]) only."""
    shape = tuple(int(s) for s in shape)
    index_list = _as_index_list(indices)
    out = torch.empty((len(index_list), *shape), dtype=torch.float32)
    for row, index in enumerate(index_list):
        out[row] = torch.randn(shape, generator=torch_generator(seed, "sample-noise", index))
    return out


def sample_labels(seed: int, indices: Iterable[int], num_classes: int) -> torch.Tensor:
    """Uniformly random class labels (len(indices),) int64 in [0, num_classes); label k depends on (seed, indices[k])."""
    require(isinstance(num_classes, int) and num_classes > 0, f"num_classes must be a positive integer, got {num_classes!r}")
    index_list = _as_index_list(indices)
    labels = [int(torch.randint(num_classes, (1,), generator=torch_generator(seed, "sample-label", i)))
              for i in index_list]
    return torch.tensor(labels, dtype=torch.int64)
