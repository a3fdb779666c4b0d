"""Processes and micro-batches of one tokenizer step: which images this process handles, and the
accelerate ``Accelerator`` that places the networks and averages their gradients (DDP).

The global batch B (the spec's ``batch_size``) is cut into B / m micro-batches of size m (the
spec's ``micro_batch_size``, default B / W); the W processes take consecutive runs of them
(process r: micro-batches r·k … r·k + k − 1, k = B / (m·W)). Each micro-batch's loss — a mean over
its m images — is scaled by 1/k = m·W / B before backward; DDP averages the gradients over the W
processes on the last micro-batch (``no_sync`` before it). The summed gradient is then the gradient
of the global-batch mean, whatever W and m are.

Processes come from ``torchrun`` (the workflow's launcher) or ``accelerate launch``; on a CPU
``ACCELERATE_USE_CPU=true`` makes accelerate join them over gloo instead of leaving each process
alone in a world of one (which :func:`training_accelerator` refuses).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import DiffusabilityError, require

PRECISION_TO_ACCELERATE = {"fp32": "no", "bf16": "bf16"}


@dataclass(frozen=True)
class BatchLayout:
    """How one global batch of ``global_batch`` images splits over processes and micro-batches."""

    global_batch: int
    micro_batch: int
    world_size: int = 1
    rank: int = 0

    def __post_init__(self):
        require(self.world_size >= 1 and 0 <= self.rank < self.world_size,
                f"batch layout: rank {self.rank} outside a world of {self.world_size} processes")
        require(self.global_batch % self.world_size == 0,
                f"tokenizer spec: batch_size {self.global_batch} is not divisible by the {self.world_size} processes")
        share = self.global_batch // self.world_size
        require(self.micro_batch >= 1 and share % self.micro_batch == 0,
                f"tokenizer spec: micro_batch_size {self.micro_batch} does not divide the per-process share "
                f"{share} of batch_size {self.global_batch} over {self.world_size} processes")

    @property
    def micro_batches_per_process(self) -> int:
        return self.global_batch // (self.world_size * self.micro_batch)

    @property
    def total_micro_batches(self) -> int:
        return self.global_batch // self.micro_batch

    @property
    def loss_scale(self) -> float:
        """Factor on a micro-batch mean so that averaging over processes gives the global-batch mean."""
        return self.micro_batch * self.world_size / self.global_batch

    def my_micro_batches(self) -> list[tuple[int, slice]]:
        """(global micro-batch index, slice of the global batch) of this process's micro-batches."""
        first = self.rank * self.micro_batches_per_process
        return [(g, slice(g * self.micro_batch, (g + 1) * self.micro_batch))
                for g in range(first, first + self.micro_batches_per_process)]


def training_accelerator(precision: str):
    """The ``Accelerator`` of one tokenizer run: bf16 autocast or none, DDP over all started processes.

    DDP looks for parameters a step leaves unused, because some only take part now and then: the
    ViT's mask token (only under ``mae``), lmr's mask token (only when a mask is drawn). Without the
    search DDP would wait for their gradients forever; with it they count as zeros, as the same
    micro-batch on one process would.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs

    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    try:
        accelerator = Accelerator(mixed_precision=PRECISION_TO_ACCELERATE[precision], kwargs_handlers=handlers)
    except ValueError as exc:  # accelerate fixes the precision for the life of a process
        raise DiffusabilityError(f"tokenizer spec: precision {precision!r} in a process that already trained with "
                                 f"another precision; start a new process ({exc})") from exc
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    require(accelerator.num_processes == launched,
            f"accelerate sees {accelerator.num_processes} process(es) but the launcher started {launched}: "
            "on a CPU set ACCELERATE_USE_CPU=true, or every process trains alone")
    return accelerator
