"""Helpers shared by the bench scripts: the repo on sys.path, the SQuAD subset and its restatement edits."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SQUAD = REPO.parent / "shared" / "data" / "squad" / "squad_val.json"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def squad_subset(offset: int, limit: int, path: Path = SQUAD):
    """Standard SQuAD subset (random.Random(42) shuffle), passages [offset, offset + limit)."""
    from orchestration.core.contexts import load_contexts

    return load_contexts(str(path), shuffle_seed=42, offset=offset, limit=limit)


def restatement(ctx) -> str:
    """The deterministic restatement edit of bench/restate_edits.py (reads title and passage only)."""
    from restate_edits import make_edit  # bench/ is on sys.path: the scripts run from it

    return "\n".join(make_edit(ctx.context))
