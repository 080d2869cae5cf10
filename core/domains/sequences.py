"""Turning a self-edit into training sequences, as the SEAL reference implementation does.

The edit is split into items: one per line, with list markers ("1.", "-", "*") removed and a
``Question:`` line kept together with the ``Answer:`` line after it. Each item is prefixed with the
passage title (a bare "It opened in 1874." teaches nothing about *what* opened), the passage itself
is appended as one more sequence by default (``passage_copies``), and empty items are dropped. The count cap is applied
here and the token cap at tokenisation; both are reported, never applied silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MARKER = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s+")
_QUESTION = re.compile(r"^\s*(?:Q|Question)\s*[:.]", re.IGNORECASE)
_ANSWER = re.compile(r"^\s*(?:A|Answer)\s*[:.]", re.IGNORECASE)


@dataclass(frozen=True)
class EditSequences:
    sequences: tuple[str, ...]
    n_items: int  # items found in the edit, before the cap
    n_dropped: int  # items beyond max_sequences, not trained on


def split_items(edit: str) -> list[str]:
    """Split an edit into items; a Question line absorbs the Answer line that follows it."""
    items: list[str] = []
    for raw in edit.splitlines():
        line = _MARKER.sub("", raw).strip()
        if not line:
            continue
        if _ANSWER.match(line) and items and _QUESTION.match(items[-1]) and "\n" not in items[-1]:
            items[-1] = f"{items[-1]}\n{line}"
        else:
            items.append(line)
    return items


def edit_to_sequences(title: str, passage: str, edit: str, *, passage_copies: int = 1,
                      max_sequences: int = 64) -> EditSequences:
    """Training sequences for one (context, edit): the edit's items, then ``passage_copies`` copies of
    the passage (never capped away). An edit with no items trains on the passage once."""
    items = split_items(edit)
    copies = passage_copies if items else 1
    room = max(0, max_sequences - copies)
    kept = items[:room]
    seqs = [f"{title}\n{item}" for item in kept]
    seqs += [f"{title}\n{passage.strip()}"] * copies
    return EditSequences(tuple(seqs), n_items=len(items), n_dropped=len(items) - len(kept))
