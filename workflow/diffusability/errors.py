"""The one exception type users see: a message that names the file, key or tensor at fault."""

from __future__ import annotations

import contextlib
from typing import Iterator


class DiffusabilityError(Exception):
    """Bad input or a failed precondition, with a message meant for the user (no traceback)."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`DiffusabilityError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise DiffusabilityError(message)


@contextlib.contextmanager
def about(name: object) -> Iterator[None]:
    """Prefix any :class:`DiffusabilityError` raised inside the block with ``name`` (a file or key).

    Checks deep inside a computation ("latents contain NaN") know the tensor, not the file it came
    from; the command wraps the call so the user reads "<file>: latents contain NaN".
    """
    try:
        yield
    except DiffusabilityError as exc:
        text = str(exc)
        if str(name) in text:
            raise
        raise DiffusabilityError(f"{name}: {text}") from exc


def reject_unknown_keys(spec: dict, known, where: str) -> None:
    """Raise :class:`DiffusabilityError` naming every key of ``spec`` that is not in ``known``."""
    unknown = sorted(set(spec) - set(known))
    require(not unknown, f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")
