"""Processes and micro-batches of one tokenizer step: which images this process handles, and how
its gradients join the others'.

The global batch B (the spec's ``batch_size``) is cut into B / m micro-batches of size m (the
spec's ``micro_batch_size``, default B / W); the W processes take consecutive runs of them
(process r: micro-batches r·k … r·k + k − 1, k = B / (m·W)). Each micro-batch's loss — a mean over
its m images — is scaled by m·W / B before backward, and after the last micro-batch every gradient
is averaged over the processes (what DDP does). The summed gradient is then the gradient of the
global-batch mean, whatever W and m are.

Processes are started by ``torchrun`` (``ACCELERATE_USE_CPU=true`` on a CPU, gloo) and joined
through accelerate's ``PartialState``; a plain ``python`` run is one process and never imports
accelerate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from ..errors import require


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


class ProcessGroup:
    """This process's rank and world size, gradient averaging and value averaging across processes."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = 0
        if self.world_size > 1:
            from accelerate import PartialState

            # joins the process group torchrun set up (gloo on a CPU when ACCELERATE_USE_CPU=true)
            # PartialState reads ACCELERATE_USE_CPU only through AcceleratorState; pass it on ourselves
            cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
            state = PartialState(cpu=cpu)
            require(state.num_processes == self.world_size,
                    f"accelerate sees {state.num_processes} processes but WORLD_SIZE is {self.world_size}: "
                    "on a CPU set ACCELERATE_USE_CPU=true")
            self.rank = state.process_index

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Average ``.grad`` over processes in one all-reduce (missing gradients count as zeros)."""
        if self.world_size == 1:
            return
        parameters = [p for p in parameters if p.requires_grad]
        for parameter in parameters:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
        flat = torch.cat([p.grad.reshape(-1) for p in parameters])
        torch.distributed.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for parameter in parameters:
            count = parameter.numel()
            parameter.grad.copy_(flat[offset:offset + count].view_as(parameter))
            offset += count

    def sum_values(self, values: Sequence[float]) -> list[float]:
        """Element-wise sum of a list of floats over processes (float64)."""
        if self.world_size == 1:
            return list(values)
        tensor = torch.tensor(list(values), dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()
