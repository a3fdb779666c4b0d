"""``--spec`` arguments: the rule's slice of the config as one JSON object (used by every command)."""

from __future__ import annotations

import argparse
import json
from typing import Any, Mapping


def json_spec(text: str) -> dict:
    """argparse type for ``--spec``: a JSON object (a slice of the workflow config)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--spec is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--spec must be a JSON object")
    return value


def resolve_spec(spec: Mapping[str, Any] | None, defaults: Mapping[str, Any], what: str,
                 positive: tuple[str, ...] = ()) -> dict[str, Any]:
    """``defaults`` updated with ``spec``; a key of ``spec`` that ``defaults`` lacks is an error naming ``what``,
    and so is a key of ``positive`` whose value is not an integer >= 1 (``"8"``, ``8.5``, NaN, ``true``)."""
    from .errors import require

    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(defaults))
    require(not unknown, f"{what} spec: unknown key(s) {unknown}; known keys are {sorted(defaults)}")
    resolved = {**defaults, **spec}
    for key in positive:
        value = resolved[key]
        require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{what} spec: '{key}' must be an integer >= 1, got {value!r}")
    return resolved
