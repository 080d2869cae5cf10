"""ARC grids: validation of raw JSON, and the compact text form a language model reads and writes.

A grid is a tuple of rows of ints 0..9 (immutable, so predictions can be counted and voted on).
The text form is one line per row, digits with no separators ("012\\n340"): with small LMs every
separator token is one more position of context spent on nothing.
"""

from __future__ import annotations

import re

Grid = tuple[tuple[int, ...], ...]

MAX_SIDE = 30  # ARC's own limit on height and width
_DIGITS = re.compile(r"[0-9]+")  # not str.isdigit: that accepts '²' and other Unicode digits
WHAT_A_GRID_IS = (f"a grid is a non-empty list of equal-length non-empty lists of ints 0..9, "
                  f"at most {MAX_SIDE}x{MAX_SIDE}")


class ArcDataError(ValueError):
    """An ARC file, task or grid is malformed; the message names the task and field at fault."""


def to_grid(value: object, where: str) -> Grid:
    """Validate a JSON value as a grid; raise ArcDataError naming ``where`` and what a grid must be."""

    def bad(why: str) -> ArcDataError:
        return ArcDataError(f"{where}: {why} ({WHAT_A_GRID_IS})")

    if not isinstance(value, list) or not value:
        raise bad(f"expected a non-empty list of rows, got {value!r:.60}")
    if len(value) > MAX_SIDE:
        raise bad(f"{len(value)} rows")
    rows = []
    for r, row in enumerate(value):
        if not isinstance(row, list) or not row:
            raise bad(f"row {r} is not a non-empty list: {row!r:.60}")
        if len(row) != len(value[0]):
            raise bad(f"row {r} has {len(row)} cells, row 0 has {len(value[0])}")
        for c, cell in enumerate(row):
            # bool is an int subclass; True is not a colour
            if type(cell) is not int or not 0 <= cell <= 9:
                raise bad(f"row {r} cell {c} is {cell!r:.20}")
        rows.append(tuple(row))
    if len(rows[0]) > MAX_SIDE:
        raise bad(f"{len(rows[0])} columns")
    return tuple(rows)


def shape(grid: Grid) -> tuple[int, int]:
    """(height, width)."""
    return len(grid), len(grid[0])


def fits(height: int, width: int) -> bool:
    return 1 <= height <= MAX_SIDE and 1 <= width <= MAX_SIDE


def encode(grid: Grid) -> str:
    """One line per row, digits with no separators; no trailing newline."""
    return "\n".join("".join(str(c) for c in row) for row in grid)


def decode(text: str) -> Grid | None:
    """The grid at the start of a model's output, or None; never raises.

    Takes the leading run of all-digit lines (after stripping the text and each line), stopping at
    the first blank or non-digit line, so whatever the model writes after the grid is ignored. The
    run must be rectangular and within MAX_SIDE; a ragged run is None, not its rectangular prefix
    (a truncated answer is a wrong answer).
    """
    if not isinstance(text, str):
        return None
    rows = []
    for line in text.strip().splitlines():
        line = line.strip()
        if not _DIGITS.fullmatch(line):
            break
        rows.append(tuple(int(ch) for ch in line))
    if not rows or any(len(r) != len(rows[0]) for r in rows) or not fits(len(rows), len(rows[0])):
        return None
    return tuple(rows)
