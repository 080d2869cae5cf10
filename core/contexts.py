"""Contexts (a passage plus questions about it) in the SEAL/SQuAD schema.

A context file is a JSON list of ``{"title", "context", "questions": [{"question", "answer"}]}``,
or a JSONL file with one such record per line (read by `datasets`' JSON builder, the form large
exports come in). Either is validated as plain JSON first, so an error names the line or record
index and the field, and only then handed to `datasets` (which would otherwise fail deep inside
Arrow, logging a traceback, with no record index).

Every context gets a ``context_id``: a short hash of title + passage. Titles alone are not unique
(SQuAD has 2,067 passages under 48 titles), and the id keys edits, results, resume and idempotency.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from core.runs import read_json, read_text

DEMO = "demo"  # the built-in fictional set shipped with the package
SQUAD_SPLIT = {"heldout": ((100, 200),), "teacher": ((200, 300), (500, None)), "tuning": ((300, 500),)}
"""How the SQuAD passages are used, as half-open ranges of indices after the standard
random.Random(42) shuffle: held-out evaluation on the standard subset's passages 101-200, teacher
training on 201-300 and from 501 on, recipe tuning (bench/validity.py, bench/sweep_recipe.py) on
301-500. Nothing is tuned on 1-200 (tests/test_split.py checks the configs)."""


def squad_role(start: int, stop: int) -> str | None:
    """The role of SQUAD_SPLIT whose one range holds the passages [start, stop), or None."""
    for role, ranges in SQUAD_SPLIT.items():
        if any(lo <= start and (hi is None or stop <= hi) for lo, hi in ranges):
            return role
    return None
DEMO_FILE = "demo_contexts.json"


@dataclass(frozen=True)
class QA:
    question: str
    answer: str


@dataclass(frozen=True)
class Context:
    context_id: str
    title: str
    context: str
    questions: tuple[QA, ...]


class ContextDataError(ValueError):
    """A context file or record is malformed; the message names the record and field."""


def context_id(title: str, context: str) -> str:
    """Stable 12-hex-digit id of a passage: sha256 of title, NUL, passage."""
    return hashlib.sha256(f"{title}\x00{context}".encode()).hexdigest()[:12]


def _require_str(rec: dict, key: str, where: str) -> str:
    if key not in rec:
        raise ContextDataError(f"{where}: missing field '{key}' (expected a string)")
    val = rec[key]
    if not isinstance(val, str) or not val.strip():
        raise ContextDataError(f"{where}: field '{key}' must be a non-empty string, got {val!r:.60}")
    return val


def validate_records(records: object, source: str = "<data>", need_questions: bool = True) -> list[dict]:
    """Check the SEAL/SQuAD schema on plain JSON; return the records unchanged.

    Raises ContextDataError naming ``source``, the record index and the field at fault.
    """
    if not isinstance(records, list):
        raise ContextDataError(f"{source}: expected a JSON list of records, got {type(records).__name__}")
    for i, rec in enumerate(records):
        where = f"{source}: record {i}"
        if not isinstance(rec, dict):
            raise ContextDataError(f"{where}: expected an object, got {type(rec).__name__}")
        _require_str(rec, "title", where)
        _require_str(rec, "context", where)
        if not need_questions and "questions" not in rec:
            continue
        qs = rec.get("questions")
        if not isinstance(qs, list) or (need_questions and not qs):
            raise ContextDataError(f"{where}: field 'questions' must be a non-empty list of {{question, answer}}")
        for j, q in enumerate(qs):
            if not isinstance(q, dict):
                raise ContextDataError(f"{where}: questions[{j}] must be an object with 'question' and 'answer'")
            _require_str(q, "question", f"{where}: questions[{j}]")
            _require_str(q, "answer", f"{where}: questions[{j}]")
    return records


def _to_contexts(rows) -> list[Context]:
    return [
        Context(
            context_id=context_id(r["title"], r["context"]),
            title=r["title"],
            context=r["context"],
            questions=tuple(QA(q["question"], q["answer"]) for q in r["questions"]),
        )
        for r in rows
    ]


def refuse_duplicates(contexts, where: str) -> None:
    """Refuse a selection that holds a context twice (same ``context_id``: same title and passage).
    Results are keyed by the id, so a repeated context would be written under one key twice and its
    questions counted twice."""
    seen: set[str] = set()
    repeated = []
    for c in contexts:
        if c.context_id in seen:
            repeated.append(c.title)
        seen.add(c.context_id)
    if repeated:
        titles = ", ".join(f"'{t[:60]}'" for t in dict.fromkeys(repeated))
        raise ContextDataError(f"{where}: {len(repeated)} context(s) appear more than once (same title and "
                               f"passage): {titles}; remove the repeated records")


MISSING = (f"data file {{path}} does not exist; give a SEAL/SQuAD JSON or JSONL file, '{DEMO}' for the built-in "
           f"set, or a hub dataset id")


def read_json_records(path: str | Path) -> list:
    """Read a JSON file, turning a missing file, bad bytes or bad JSON into a ContextDataError."""
    return read_json(path, ContextDataError, MISSING)


def read_jsonl_dataset(path: str | Path):
    """A JSONL file (one record per line) as a `datasets.Dataset`. A missing file, a file that is not
    UTF-8, a line that is not JSON or a record off the schema is a ContextDataError naming the file
    and the line or record."""
    import datasets

    records = []
    for i, line in enumerate(read_text(path, ContextDataError, MISSING).splitlines()):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ContextDataError(f"{path}: line {i + 1} is not valid JSON ({e}); a JSONL file holds one "
                                       f"JSON record per line") from e
    if not validate_records(records, str(path)):
        return datasets.Dataset.from_list([])
    return datasets.load_dataset("json", data_files=str(path), split="train")


def demo_records() -> list[dict]:
    return json.loads(resources.files("core").joinpath(DEMO_FILE).read_text())


def load_contexts(source: str, *, split: str = "validation", shuffle_seed: int | None = None,
                  offset: int = 0, limit: int | None = None) -> list[Context]:
    """Load contexts from ``demo``, a JSON or JSONL file, or a hub dataset id (needs a network).

    ``shuffle_seed`` shuffles the whole list with ``random.Random(seed).shuffle`` before
    ``offset``/``limit`` slice it: ``shuffle_seed=42, limit=200`` is the standard SQuAD subset.
    """
    import datasets  # heavy; only here

    if source == DEMO:
        records = validate_records(demo_records(), "built-in demo set")
        ds = datasets.Dataset.from_list(records)
    elif Path(source).suffix == ".jsonl":
        ds = read_jsonl_dataset(source)
    elif Path(source).suffix == ".json" or Path(source).exists():
        records = validate_records(read_json_records(source), str(source))
        ds = datasets.Dataset.from_list(records)
    else:
        ds = datasets.load_dataset(source, split=split)
        validate_records([dict(r) for r in ds], source)
    rows = list(ds)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(rows)
    end = None if limit is None else offset + limit
    return _to_contexts(rows[offset:end])


def context_to_json(ctx: Context) -> dict:
    """A context as a plain JSON object (queue payloads carry it, so a worker needs no data files)."""
    return {"context_id": ctx.context_id, "title": ctx.title, "context": ctx.context,
            "questions": [{"question": q.question, "answer": q.answer} for q in ctx.questions]}


def context_from_json(raw: dict) -> Context:
    return Context(context_id=raw["context_id"], title=raw["title"], context=raw["context"],
                   questions=tuple(QA(q["question"], q["answer"]) for q in raw["questions"]))
