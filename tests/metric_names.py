"""The table of logged metric names (cs336_alignment/train/README.md, "Logged metrics"), for the tests that hold the
loops to it."""
from __future__ import annotations

import re
from pathlib import Path

from cs336_alignment.train.common import read_metrics

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TABLE = ROOT / "cs336_alignment" / "train" / "README.md"
# In the student handout README.md is the assignment's writeup, which has no metric table or file map: the tests
# that hold the library's README to the code check the solution repository only.
IS_LIBRARY_README = "## The package, file by file" in README.read_text()
NOT_IN_HANDOUT = "the handout's README is the writeup; this checks the solution repository's README"


def metric_table() -> list[list[str]]:
    """The rows of the table, as lists of cells (name(s), logged by, meaning, units)."""
    text = TABLE.read_text()
    section = text[text.index("## Logged metrics"):]
    return [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| `")]


def documented_names() -> set[str]:
    return {name for row in metric_table() for name in re.findall(r"`([^`]+)`", row[0])}


def undocumented(paths) -> set[str]:
    """Metric names in these metrics.jsonl files that the README's table lacks (none in the handout, whose README
    is the writeup: IS_LIBRARY_README)."""
    if not IS_LIBRARY_README:
        return set()
    logged = {key for path in paths for record in read_metrics(path) for key in record if key != "step"}
    return logged - documented_names()
