"""Full-state training checkpoints, written atomically, found again by a rerun.

A checkpoint is one ``torch.save`` file ``ckpt-<step>.pt`` holding whatever state dict the
trainer passes (model, EMA, optimizers, step, RNG states, data-order position). It is written
to a temporary name and renamed, so a SIGKILL leaves either the previous checkpoint or the new
one, never a torn file. A rerun of the same rule calls :func:`latest_checkpoint` and resumes.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from .errors import DiffusabilityError, require
from .io import atomic_path

_NAME = re.compile(r"^ckpt-(\d{8})\.pt$")


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"ckpt-{step:08d}.pt"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint, or ``None`` when training starts from scratch."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` atomically as step ``step``; keep only the ``keep`` newest checkpoints."""
    import torch

    path = checkpoint_path(directory, step)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for _, old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (on the CPU)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a torn file cannot happen with atomic writes, but say so clearly
        raise DiffusabilityError(f"{path}: unreadable checkpoint ({exc}); delete it to restart") from exc


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states (python, numpy, torch CPU and CUDA) for a checkpoint."""
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_finite(value: float, name: str, step: int) -> None:
    """Stop training with the step and the offending value when a loss is NaN or infinite."""
    import math

    require(math.isfinite(value), f"{name} is {value} at step {step}: training stopped "
                                  "(lower the learning rate, enable gradient clipping, or use fp32)")
