"""``--spec`` arguments: the rule's slice of the config as one JSON object (used by every command)."""

from __future__ import annotations

import argparse
import json


def json_spec(text: str) -> dict:
    """argparse type for ``--spec``: a JSON object (a slice of the workflow config)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--spec is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--spec must be a JSON object")
    return value
