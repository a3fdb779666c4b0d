"""Splitting a sampling job over processes by fixed index blocks (torchrun / torch.distributed).

Block b holds the sample indices [b·B, min((b+1)·B, N)) with B the spec's batch size, and blocks
are dealt round-robin to ranks (rank r gets blocks r, r + W, r + 2W, …). Every block is sampled
and decoded as ONE batch whatever the number of processes W, so each image goes through exactly
the same floating-point operations on 1 or W processes and the output is byte-identical.

Results travel between processes through per-rank shard files next to the output (written
atomically, merged by rank 0, then deleted): that works with any backend (gloo, nccl) and for
outputs far larger than what one would pickle through a collective.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import require


def index_blocks(num_samples: int, batch_size: int) -> list[range]:
    """The blocks [b·B, min((b+1)·B, N)) for b = 0 … ⌈N/B⌉ − 1."""
    require(isinstance(num_samples, int) and num_samples >= 0, f"num_samples must be an integer ≥ 0, got {num_samples!r}")
    require(isinstance(batch_size, int) and batch_size > 0, f"batch_size must be a positive integer, got {batch_size!r}")
    return [range(start, min(start + batch_size, num_samples)) for start in range(0, num_samples, batch_size)]


def blocks_of_rank(num_blocks: int, rank: int, world_size: int) -> list[int]:
    """Block numbers of ``rank`` among ``world_size`` processes: rank, rank + W, rank + 2W, … (< num_blocks)."""
    require(world_size > 0 and 0 <= rank < world_size, f"rank must be in [0, {world_size}), got {rank}")
    return list(range(rank, num_blocks, world_size))


@dataclass
class ProcessGroup:
    """Where this process stands: rank, world size, local rank and whether it set up torch.distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.initialised_here = False


def join_process_group(use_cuda: bool) -> ProcessGroup:
    """The process group torchrun set up through WORLD_SIZE/RANK/LOCAL_RANK (a single process without them).

    gloo on the CPU, nccl on GPUs. Already-initialised groups are reused (and left open).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ProcessGroup()
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return ProcessGroup(dist.get_rank(), dist.get_world_size(), local_rank, False)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    require(dist.get_world_size() == world_size, f"torch.distributed reports {dist.get_world_size()} processes but "
                                                 f"WORLD_SIZE is {world_size}")
    return ProcessGroup(rank, world_size, local_rank, True)


def shard_path(out: Path, rank: int, world_size: int) -> Path:
    """The shard file of ``rank`` for output ``out`` (a hidden sibling, removed after the merge)."""
    out = Path(out)
    return out.with_name(f".{out.name}.rank{rank}-of-{world_size}.safetensors")
