"""``diffusability <command> …``: one subcommand per workflow rule, explicit file arguments.

Each stage package owns a ``commands`` module with a ``register(subparsers)`` function; this
file only collects them. Stage modules import torch lazily so ``--help`` stays fast.
A :class:`~diffusability.errors.DiffusabilityError` ends the command with its message and
exit status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import DiffusabilityError
from .progress import setup_logging

COMMAND_MODULES = (
    "diffusability.data.commands",
    "diffusability.teacher.commands",
    "diffusability.evaluation.commands",
    "diffusability.tokenizers.commands",
    "diffusability.reconstruction.commands",
    "diffusability.latents.commands",
    "diffusability.diffusion.commands",
    "diffusability.sampling.commands",
    "diffusability.representation.commands",
    "diffusability.latent_metrics.commands",
    "diffusability.latent_metrics.network_commands",
    "diffusability.analysis.commands",
    "diffusability.plan",
    "diffusability.analysis.predict_command",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffusability", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a stage without commands yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    from . import io

    io.CURRENT_COMMAND = args.command  # every artifact's provenance names the code that made it
    try:
        result = args.func(args)
    except DiffusabilityError as exc:
        print(f"diffusability {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
