"""Plain records exchanged between the two sides: frozen dataclasses that round-trip through JSON.

No pickle anywhere: a record is written with `to_json` and read back with `from_json`, which checks
the field names, so a result file from another version fails loudly instead of half-loading.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class QuestionVerdict:
    question: str
    gold: str
    answer: str
    score: float


@dataclass(frozen=True)
class StudentResult:
    """One student's score on one context, after one adaptation (or none, for the baseline).

    ``key`` is the idempotency key: one row per key, ever. ``score`` is the grader's mean over the
    context's questions; ``baseline_score`` is the same student's unadapted score on them.
    """

    key: str
    student: str
    context_id: str
    condition: str  # base | passage | edits (later: a teacher version)
    completion: int  # index of the edit among the context's completions (0 for base/passage)
    score: float
    baseline_score: float
    verdicts: tuple[QuestionVerdict, ...]
    seed: int
    grader: str
    train: dict[str, Any] = field(default_factory=dict)  # TrainStats + edit split counts; {} for base
    timings: dict[str, float] = field(default_factory=dict)  # seconds: train_s, answer_s

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "StudentResult":
        raw = json.loads(line)
        names = {f.name for f in fields(cls)}
        if set(raw) != names:
            raise ValueError(f"result row fields {sorted(set(raw) ^ names)} do not match StudentResult")
        raw["verdicts"] = tuple(QuestionVerdict(**v) for v in raw["verdicts"])
        return cls(**raw)
