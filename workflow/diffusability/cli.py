"""``diffusability <command> …``: one subcommand per workflow rule, explicit file arguments.

Each stage package owns a ``commands`` module with a ``register(subparsers)`` function;
:data:`COMMAND_MODULES` is the one list of them. Command modules import torch lazily (inside the
command functions) so ``--help`` stays fast.
A :class:`~diffusability.errors.DiffusabilityError` ends the command with its message and
exit status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys

from . import plan
from .analysis import commands as analysis_commands
from .analysis import predict_command
from .data import commands as data_commands
from .diffusion import commands as diffusion_commands
from .diffusion import convert_command
from .errors import DiffusabilityError
from .evaluation import commands as evaluation_commands
from .latent_metrics import commands as latent_metrics_commands
from .latent_metrics import network_commands
from .latents import commands as latents_commands
from .progress import setup_logging
from .reconstruction import commands as reconstruction_commands
from .representation import commands as representation_commands
from .sampling import commands as sampling_commands
from .teacher import commands as teacher_commands
from .tokenizers import commands as tokenizers_commands

#: every module that registers subcommands, in stage order (its ``register(subparsers)`` adds them)
COMMAND_MODULES = (
    data_commands,
    teacher_commands,
    tokenizers_commands,
    reconstruction_commands,
    latents_commands,
    latent_metrics_commands,
    network_commands,
    diffusion_commands,
    convert_command,
    sampling_commands,
    evaluation_commands,
    representation_commands,
    analysis_commands,
    predict_command,
    plan,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``diffusability`` parser with the subcommands of every module of :data:`COMMAND_MODULES`."""
    parser = argparse.ArgumentParser(prog="diffusability", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``diffusability <command> …`` and return its exit status (2 on a :class:`DiffusabilityError`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    from .allocator import keep_freed_memory

    keep_freed_memory()  # a step's tensors are not faulted in again at every step (allocator.py)
    from . import devices, io

    # every artifact's provenance names the code, the inputs and the device that made it (the inputs: the
    # arguments naming existing paths, outputs left out by name; hashed when the first artifact is written)
    io.CURRENT_COMMAND = args.command
    io.CURRENT_INPUTS = io.command_inputs(args)
    devices.USED_DEVICE = None
    try:
        result = args.func(args)
    except DiffusabilityError as exc:
        print(f"diffusability {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:  # a later write in this process (tests, the Python API) is not credited to this command
        io.CURRENT_COMMAND, io.CURRENT_INPUTS, devices.USED_DEVICE = None, {}, None
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
