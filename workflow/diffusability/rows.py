"""The one result-row type: every per-job table of the study is a tidy list of these rows.

A row is ``metric`` (str), ``value`` (float64), ``direction`` ("lower", "higher" or "none": which
way is better; "none" for diagnostics), ``params`` (the computation's parameters as key-sorted JSON)
and ``n`` (how many items the value was computed from). Wall times are not part of a row: they go to
the job's log, so that two identical runs write byte-identical tables and a table's hash identifies
its content.

Examples
--------
>>> frame = rows_frame([result_row("fd", 12.5, "lower", {"net": "inception"}, 50000)])
>>> list(frame.columns), frame.loc[0, "params"]
(['metric', 'value', 'direction', 'params', 'n'], '{"net": "inception"}')
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping

from .errors import require

ROW_COLUMNS = ("metric", "value", "direction", "params", "n")
DIRECTIONS = ("lower", "higher", "none")


def result_row(metric: str, value: float, direction: str, params: Mapping[str, Any] | str | None = None,
               n: int = 0) -> dict[str, Any]:
    """One result row; ``params`` as a mapping (serialised key-sorted) or as ready JSON text."""
    require(direction in DIRECTIONS, f"{metric}: direction must be one of {DIRECTIONS}, got {direction!r}")
    text = params if isinstance(params, str) else json.dumps(dict(params or {}), sort_keys=True)
    return {"metric": str(metric), "value": float(value), "direction": direction, "params": text, "n": int(n)}


def rows_frame(rows: Iterable[Mapping[str, Any]], require_finite: bool = True):
    """The rows as a DataFrame with the row schema's columns and dtypes (extra keys are dropped).

    Raises :class:`~diffusability.errors.DiffusabilityError` naming the metric when a value is NaN or
    infinite (``require_finite``): a result row is never a silent wrong number.
    """
    import pandas as pd

    rows = list(rows)
    if require_finite:
        for row in rows:
            require(math.isfinite(float(row["value"])), f"{row['metric']}: the value is {row['value']}")
    frame = pd.DataFrame([{k: row[k] for k in ROW_COLUMNS} for row in rows], columns=list(ROW_COLUMNS))
    return frame.astype({"metric": str, "value": "float64", "direction": str, "params": str, "n": "int64"})
