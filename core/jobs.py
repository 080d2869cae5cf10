"""The one record every queue job carries: what the driver asks of a student worker.

`seal train` and `seal evaluate` build it alike; the queue stores its `to_json` (never pickle) and
hands a worker the parsed record. Its contexts travel whole (passage and questions, or an ARC task),
serialised by their domain, so a worker needs nothing but the queue file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

from core import domains
from core.records import Condition, fields_checked


def job_kind(student: str) -> str:
    """Queue kind of the jobs of one student (each student's workers serve only their own). A colon,
    not a slash: a student that is a folder reads ``adapt:/runs/x/v1``, not ``adapt//runs/x/v1``."""
    return f"adapt:{student}"


@dataclass(frozen=True)
class StudentJob:
    """One job for a student worker: adapt a fresh adapter on ``edits`` under ``condition`` and
    answer the queries of ``contexts`` without them ('base': answer with the bare model, nothing
    trained). One context, or several trained together on their edits (multi-passage; the result
    pools their questions). Built by `seal train` and `seal evaluate` alike; the queue stores its
    `to_json` and hands a worker the parsed record."""

    domain: str  # the contexts' domain: 'knowledge' | 'arc' (`core.domains`)
    condition: Condition
    contexts: tuple  # the domain's contexts (knowledge: Context; ARC: ArcTask)
    edits: tuple[str, ...]  # one per context; "" for the reference conditions
    edit_id: str | None = None  # the `SelfEdit` whose text is in ``edits`` (seal train); None otherwise
    sample: int = 0  # index of the edit among its context's (0 for the reference conditions)
    seed: int | None = None  # the adaptation seed; None: the student's ``train.seed``
    answer: bool = True  # False: only the gold answers' log-likelihoods, no answers generated

    def __post_init__(self):
        object.__setattr__(self, "condition", Condition(self.condition))  # a known condition, as the enum
        if not self.contexts or len(self.edits) != len(self.contexts):
            raise ValueError(f"a StudentJob needs one edit per context, got {len(self.edits)} edits for "
                             f"{len(self.contexts)} contexts")
        if not all(isinstance(e, str) for e in self.edits):
            raise TypeError(f"StudentJob.edits must be strings, got {[type(e).__name__ for e in self.edits]}")

    @property
    def context_id(self) -> str:
        """The contexts' ids joined with '+' (a result's ``context_id``)."""
        return "+".join(c.context_id for c in self.contexts)

    def to_json(self) -> str:
        domain = domains.get(self.domain)
        raw = {f.name: getattr(self, f.name) for f in fields(self)}
        return json.dumps({**raw, "contexts": [domain.to_json(c) for c in self.contexts], "edits": list(self.edits)},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "StudentJob":
        raw = fields_checked(cls, text)
        domain = domains.get(raw["domain"])
        return cls(**{**raw, "contexts": tuple(map(domain.from_json, raw["contexts"])), "edits": tuple(raw["edits"])})
