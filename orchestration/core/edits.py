"""SEAL-format edits files: self-edits for a set of contexts, written by one teacher.

Either a plain JSON list of ``{"title", "context", "completions": [str]}`` (the SEAL reference
format), or the object `seal generate` writes: a header (``format``, ``teacher`` with model,
version and template, ``sampling``, ``data``) and ``records`` in that list format. Records are
matched to contexts by context_id (title + passage), never by position.
"""

from __future__ import annotations

from orchestration.core.contexts import ContextDataError, context_id, read_json_records, validate_records

FORMAT = "seal-edits/1"


def read_edits(path: str) -> tuple[dict, dict[str, list[str]]]:
    """(header, context_id -> completions) of an edits file; the header is {} for a plain list."""
    raw = read_json_records(path)
    header: dict = {}
    if isinstance(raw, dict):
        if raw.get("format") != FORMAT or "records" not in raw:
            raise ContextDataError(f"{path}: an edits object needs format '{FORMAT}' and 'records'; "
                                   f"or give a plain JSON list of {{title, context, completions}}")
        header = {k: v for k, v in raw.items() if k != "records"}
        raw = raw["records"]
    records = validate_records(raw, path, need_questions=False)
    out: dict[str, list[str]] = {}
    for i, rec in enumerate(records):
        comps = rec.get("completions")
        if not isinstance(comps, list) or not all(isinstance(c, str) for c in comps):
            raise ContextDataError(f"{path}: record {i}: field 'completions' must be a list of strings")
        out.setdefault(context_id(rec["title"], rec["context"]), []).extend(comps)
    return header, out


def edits_for(contexts, path: str) -> dict[str, list[str]]:
    """context_id -> completions of ``path`` for ``contexts``; every context must have some."""
    edits = read_edits(path)[1]
    missing = [c.title for c in contexts if c.context_id not in edits]
    if missing:
        raise ContextDataError(f"edits file {path} has no completions for {len(missing)} context(s), e.g. "
                               f"'{missing[0]}'; write one for these contexts with `seal generate` (same data.*)")
    return edits
