"""SEAL-format edits files: self-edits for a set of contexts, written by one teacher.

Either a plain JSON list of ``{"title", "context", "completions": [str]}`` (the SEAL reference
format), or the object `seal generate` writes: a header (``format``, ``teacher`` with model,
version and template, ``sampling``, ``data``) and ``records`` in that list format. Records are
matched to contexts by context_id (title + passage), never by position. An ARC record names its task
instead: ``{"task_id", "completions"}`` (matched to the task's context id, ``arc-<task_id>``).
"""

from __future__ import annotations

from core.arc.tasks import ID_PREFIX
from core.contexts import ContextDataError, context_id, validate_records
from core.runs import read_json

FORMAT = "seal-edits/1"


def read_edits(path: str) -> tuple[dict, dict[str, list[str]]]:
    """(header, context_id -> completions) of an edits file; the header is {} for a plain list."""
    raw = read_json(path, ContextDataError, "edits file {path} does not exist; set edits=PATH to a SEAL-format edits "
                                            "file (`seal generate` writes one)")
    header: dict = {}
    if isinstance(raw, dict):
        if raw.get("format") != FORMAT or "records" not in raw:
            raise ContextDataError(f"{path}: an edits object needs format '{FORMAT}' and 'records'; "
                                   f"or give a plain JSON list of {{title, context, completions}}")
        header = {k: v for k, v in raw.items() if k != "records"}
        raw = raw["records"]
    if not isinstance(raw, list):
        raise ContextDataError(f"{path}: expected a JSON list of edit records, got {type(raw).__name__}")
    arc = [isinstance(rec, dict) and "task_id" in rec for rec in raw]
    validate_records([rec for rec, is_arc in zip(raw, arc) if not is_arc], path, need_questions=False)
    out: dict[str, list[str]] = {}
    for i, (rec, is_arc) in enumerate(zip(raw, arc)):
        comps = rec.get("completions")
        if not isinstance(comps, list) or not all(isinstance(c, str) for c in comps):
            raise ContextDataError(f"{path}: record {i}: field 'completions' must be a list of strings")
        if is_arc and (not isinstance(rec["task_id"], str) or not rec["task_id"]):
            raise ContextDataError(f"{path}: record {i}: field 'task_id' must be a non-empty string")
        key = ID_PREFIX + rec["task_id"] if is_arc else context_id(rec["title"], rec["context"])
        out.setdefault(key, []).extend(comps)
    return header, out


def edits_for(contexts, path: str) -> dict[str, list[str]]:
    """context_id -> completions of ``path`` for ``contexts``; every context must have some."""
    edits = read_edits(path)[1]
    missing = [c.title for c in contexts if c.context_id not in edits]
    if missing:
        raise ContextDataError(f"edits file {path} has no completions for {len(missing)} context(s), e.g. "
                               f"'{missing[0]}'; write one for these contexts with `seal generate` (same data.*)")
    # an empty list would silently run as passage-only training, not as the edit it stands for
    empty = [c.title for c in contexts if not edits[c.context_id]]
    if empty:
        titles = ", ".join(f"'{t[:60]}'" for t in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise ContextDataError(f"edits file {path} has an empty 'completions' list for {len(empty)} context(s): "
                               f"{titles}; give each at least one completion (or regenerate the file with "
                               f"`seal generate`)")
    return edits
