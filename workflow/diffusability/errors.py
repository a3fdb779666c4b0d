"""The one exception type users see: a message that names the file, key or tensor at fault."""


class DiffusabilityError(Exception):
    """Bad input or a failed precondition, with a message meant for the user (no traceback)."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`DiffusabilityError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise DiffusabilityError(message)
