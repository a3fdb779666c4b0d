"""Reading Snakemake's own printout: the job-stats table of a (dry) run, for tests and benchmarks."""

from __future__ import annotations

import re

#: one row of the job-stats table: ``<rule>  <count>``
_ROW = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s+(\d+)$")


def job_counts(output: str) -> dict[str, int]:
    """{rule: count} from the first job-stats table in ``output`` ({} when nothing is to be done)."""
    counts: dict[str, int] = {}
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("total"):
            break
        match = _ROW.match(line)
        if match and match.group(1) not in ("job", "count"):
            counts[match.group(1)] = int(match.group(2))
    return counts
