"""The documentation lives in the repository (docs/), and every citation of it points somewhere real.

1. No tracked file outside docs/ cites the notes that once lived outside the repository (the upper-case
   reference files named below) — only `docs/<file>.md`.
2. Every `docs/<file>.md §N` citation in a tracked file (and every bare `§N` inside a docs file, which
   cites that file itself) names a section heading that exists in that file.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

#: the names of the notes outside the repository that docs/ replaces (written without the suffix so
#: that this file does not cite them itself)
OUTSIDE_NOTES = ("METRICS", "MODELS", "DESIGN", "WORKFLOW", "FISHER", "ENVIRONMENT")
OUTSIDE = re.compile(r"(?<![\w/])(?:" + "|".join(OUTSIDE_NOTES) + r")\.md")
SECTION_NUMBER = r"\d+(?:\.\d+)*"
HEADING = re.compile(rf"^#{{1,6}}\s+({SECTION_NUMBER})\.?\s", re.MULTILINE)
#: `docs/models.md §2.4, §2.6` or `docs/metrics.md §1 and §14`: a file and one or more sections
CITATION = re.compile(rf"docs/(?P<file>[\w.-]+\.md)(?P<sections>(?:(?:\s*,\s*|\s+and\s+|\s+)§\s*{SECTION_NUMBER})+)")
SECTION = re.compile(rf"§\s*({SECTION_NUMBER})")
SKIPPED_SUFFIXES = (".png", ".npz", ".safetensors", ".parquet", ".pt", ".pth", ".gz", ".zip")


def tracked_files(repo: Path) -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True,
                               text=True).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    files = [repo / name for name in names if name and not name.endswith(SKIPPED_SUFFIXES)]
    return [path for path in files if path.is_file()]


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def sections(path: Path) -> set[str]:
    return set(HEADING.findall(path.read_text(encoding="utf-8")))


def line_of(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def test_the_docs_exist(repo):
    for name in ("README.md", "architecture.md", "metrics.md", "models.md"):
        assert (repo / "docs" / name).is_file(), f"docs/{name} is missing"
    for name in ("architecture.md", "metrics.md", "models.md"):
        assert len(sections(repo / "docs" / name)) >= 8, f"docs/{name} has too few numbered sections"
        assert name in (repo / "docs" / "README.md").read_text(encoding="utf-8"), f"docs/README.md does not list {name}"


def test_no_file_cites_notes_outside_the_repository(repo):
    problems = []
    for path in tracked_files(repo):
        relative = path.relative_to(repo).as_posix()
        if relative.startswith("docs/"):
            continue
        text = read_text(path)
        if text is None:
            continue
        for match in OUTSIDE.finditer(text):
            problems.append(f"{relative}:{line_of(text, match.start())}: {match.group(0)} (cite docs/<file>.md §N)")
    assert not problems, "citations of notes outside the repository:\n  " + "\n  ".join(problems)


def test_every_cited_section_exists(repo):
    docs = {path.name: sections(path) for path in (repo / "docs").glob("*.md")}
    problems = []
    for path in tracked_files(repo):
        text = read_text(path)
        if text is None:
            continue
        relative = path.relative_to(repo).as_posix()
        for match in CITATION.finditer(text):
            where = f"{relative}:{line_of(text, match.start())}"
            name = match.group("file")
            if name not in docs:
                problems.append(f"{where}: docs/{name} does not exist")
                continue
            for number in SECTION.findall(match.group("sections")):
                if number not in docs[name]:
                    problems.append(f"{where}: docs/{name} has no section {number}")
        if relative.startswith("docs/") and relative.count("/") == 1:
            # a bare § inside a docs file cites that file itself
            own = CITATION.sub(lambda m: " " * len(m.group(0)), text)
            for match in SECTION.finditer(own):
                if match.group(1) not in docs[path.name]:
                    problems.append(f"{relative}:{line_of(text, match.start())}: no section {match.group(1)} here")
    assert not problems, "citations of missing sections:\n  " + "\n  ".join(problems)


def test_the_citation_pattern_reads_lists_of_sections():
    text = "see docs/models.md §2.4, §2.6 and docs/metrics.md §1 and §14; docs/architecture.md"
    found = [(m.group("file"), SECTION.findall(m.group("sections"))) for m in CITATION.finditer(text)]
    assert found == [("models.md", ["2.4", "2.6"]), ("metrics.md", ["1", "14"])]
    note = OUTSIDE_NOTES[1] + ".md"
    assert OUTSIDE.findall(f"{note} §1 but not docs/{note}") == [note]
