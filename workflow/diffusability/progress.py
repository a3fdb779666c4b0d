"""Progress reporting that works both in a terminal and in a Snakemake/SLURM log file.

In a terminal a tqdm bar is drawn; when stderr is not a TTY (a rule's log), tqdm still prints,
but at most every ``mininterval`` seconds, so log files get periodic lines instead of a flood.
"""

from __future__ import annotations

import logging
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")

log = logging.getLogger("diffusability")


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", disable: bool | None = None):
    """A tqdm progress bar; periodic (every 10 s) lines when not attached to a terminal."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    # disable=None would switch tqdm off whenever stderr is not a terminal (every rule log).
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=bool(disable),
                mininterval=0.5 if interactive else 10.0, dynamic_ncols=True,
                file=sys.stderr, leave=interactive)


def setup_logging(verbose: bool = False) -> None:
    """Log lines with a timestamp to stderr (captured by each rule's ``log:`` file)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
