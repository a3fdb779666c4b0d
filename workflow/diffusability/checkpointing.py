"""Full-state training checkpoints, written atomically, found again by a rerun.

A checkpoint is one ``torch.save`` file ``ckpt-<step>.pt`` holding whatever state dict the
trainer passes (model, EMA, optimizers, step, RNG states, data-order position) and the run
identity (:mod:`diffusability.identity`) of the run that wrote it. It is written to a temporary
name and renamed, so a SIGKILL leaves either the previous checkpoint or the new one, never a torn
file. A rerun calls :func:`resume_checkpoint`: it resumes only a checkpoint of the same run (spec
and input content), and moves any other aside so that training starts fresh — a changed input
or setting can never hand back an old model.

Checkpoints are loaded with ``torch.load(weights_only=True)``: tensors, numbers, strings and
containers only, so a checkpoint planted in a shared results folder cannot run code. The RNG
states are stored in that form (see :func:`capture_rng_state`).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from .errors import DiffusabilityError, require
from .io import atomic_path

#: Where checkpoints of another run are moved (the previous set-aside is replaced).
SUPERSEDED_SUFFIX = ".superseded"

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
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torn (impossible with atomic writes), foreign or unsafe content
        raise DiffusabilityError(f"{path}: unreadable checkpoint ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it to restart") from exc


def set_aside(directory: str | Path, reason: str) -> Path:
    """Move a checkpoint folder to ``<folder>.superseded`` (replacing an older one); return the new path."""
    import shutil

    from .progress import log

    directory = Path(directory)
    target = directory.with_name(directory.name + SUPERSEDED_SUFFIX)
    if target.exists():
        shutil.rmtree(target)
    directory.rename(target)
    log.warning("checkpoints in %s belong to another run (%s): moved to %s, training starts fresh",
                directory, reason, target)
    return target


def resume_checkpoint(directory: str | Path, identity: dict[str, Any],
                      max_step: int | None = None) -> tuple[Path | None, dict[str, Any] | None]:
    """(path, state) of the newest checkpoint of *this* run, or (None, None) to start fresh.

    A checkpoint resumes only when its stored ``identity`` equals ``identity`` (same training spec,
    same content of every input) and its step is at most ``max_step``. Otherwise the whole folder is
    moved aside (:func:`set_aside`), so neither this run nor a later one can resume it by mistake.
    An unreadable newest checkpoint raises (a torn file cannot happen with atomic writes).

    In a multi-process job every process decides the same way from the same file; only process 0
    (``RANK`` 0 or unset) moves the folder, and a process that finds the file already moved starts
    fresh like process 0 does.
    """
    import os

    from .identity import describe_difference

    main = int(os.environ.get("RANK", "0")) == 0
    latest = latest_checkpoint(directory)
    if latest is None:
        return None, None
    try:
        state = load_checkpoint(latest)
    except DiffusabilityError:
        if not main and not latest.exists():  # process 0 set it aside meanwhile
            return None, None
        raise
    saved = state.get("identity")
    reason = None
    if saved != identity:
        reason = describe_difference(saved, identity)
    elif max_step is not None and int(state.get("step", 0)) > max_step:
        reason = f"its step {state.get('step')} is beyond this run's {max_step} steps"
    if reason is None:
        return latest, state
    if main:
        set_aside(directory, reason)
    return None, None


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states (python, numpy, torch CPU and CUDA) for a checkpoint.

    Only tensors, ints, floats, strings and lists, so that ``torch.load(weights_only=True)`` reads
    them: numpy's key array becomes an int64 tensor, python's state tuple a list.
    """
    import numpy as np
    import torch

    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    saved = state["numpy"]
    np.random.set_state((saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["position"],
                         saved["has_gauss"], saved["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_finite(value: float, name: str, step: int) -> None:
    """Stop training with the step and the offending value when a loss is NaN or infinite."""
    import math

    require(math.isfinite(value), f"{name} is {value} at step {step}: training stopped "
                                  "(lower the learning rate, enable gradient clipping, or use fp32)")
