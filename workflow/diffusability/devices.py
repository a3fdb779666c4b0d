"""Where a command computes: the ``--device`` argument every GPU-capable command shares, and the device
recorded in the provenance of what the command writes (:func:`diffusability.io.provenance`)."""

from __future__ import annotations

import argparse

#: The device the running command computes on, as :func:`describe_device` words it; None while nothing
#: chose one (the command runs on the CPU). Set by :func:`resolve_device` and by the commands that pick
#: their device otherwise (accelerate's training, torchrun sampling); the CLI resets it per command.
USED_DEVICE: str | None = None


def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """Add ``--device`` (``auto`` = the GPU when one is visible, else the CPU; or any torch device name)."""
    parser.add_argument("--device", default=default,
                        help=f"torch device: auto (cuda when visible), cpu, cuda, cuda:1, … (default {default})")


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; other names pass through (and are recorded
    as the command's device, see :func:`note_device`)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    note_device(name)
    return name


def describe_device(device, processes: int = 1) -> str:
    """The device in words for an artifact's provenance: ``cpu``, ``cuda:<GPU model>``, ``mps``, …

    Parameters
    ----------
    device : str or torch.device
        The device a computation runs on.
    processes : int
        Processes computing together (one per GPU under torchrun/accelerate): ``4x`` is prepended when > 1,
        since the number of processes can change float round-off of reductions.

    Returns
    -------
    str
        The GPU's model name, not its index: two runs on equal GPUs of one machine record the same
        words, so their artifacts keep equal bytes; a GPU of another model is visible.
    """
    import torch

    device = torch.device(device)
    text = device.type
    if device.type == "cuda":
        try:
            index = device.index if device.index is not None else torch.cuda.current_device()
            text = f"cuda:{torch.cuda.get_device_name(index)}"
        except (RuntimeError, AssertionError):  # no usable GPU: the command fails on its own
            text = "cuda"
    return f"{processes}x{text}" if processes > 1 else text


def note_device(device, processes: int = 1) -> str:
    """Record ``device`` as the one this command computes on; return its description."""
    global USED_DEVICE
    USED_DEVICE = describe_device(device, processes)
    return USED_DEVICE


def used_device() -> str:
    """The recorded device of this command (``cpu`` when none was chosen)."""
    return USED_DEVICE or "cpu"
