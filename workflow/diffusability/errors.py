"""The one exception type users see: a message that names the file, key or tensor at fault."""


class DiffusabilityError(Exception):
    """Bad input or a failed precondition, with a message meant for the user (no traceback)."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`DiffusabilityError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise DiffusabilityError(message)


def reject_unknown_keys(spec: dict, known, where: str) -> None:
    """Raise :class:`DiffusabilityError` naming every key of ``spec`` that is not in ``known``."""
    unknown = sorted(set(spec) - set(known))
    require(not unknown, f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}")
