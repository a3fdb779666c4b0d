"""Where a command computes: the ``--device`` argument every GPU-capable command shares."""

from __future__ import annotations

import argparse


def add_device_argument(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    """Add ``--device`` (``auto`` = the GPU when one is visible, else the CPU; or any torch device name)."""
    parser.add_argument("--device", default=default,
                        help=f"torch device: auto (cuda when visible), cpu, cuda, cuda:1, … (default {default})")


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; other names pass through."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
