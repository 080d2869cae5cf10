"""Plain records exchanged between the two sides: frozen dataclasses that round-trip through JSON.

`StudentResult` is what a student reports for a job (`core.jobs.StudentJob`);
`SelfEdit` is what the teacher wrote.

No pickle anywhere: a record is written with `to_json` and read back with `from_json`, which checks
the field names, so a result file from another version fails loudly instead of half-loading (a
field added later with a default reads as that default from older rows).
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from core.config import Choice


class Purpose(Choice):
    """What the teacher wrote an edit for."""

    train = "train"  # seal train: sampled for a round's rewards
    heldout = "heldout"  # the held-out evaluation of a teacher version (seal train, seal evaluate)
    generate = "generate"  # seal generate, seal continual


class Condition(Choice):
    """What a student was adapted on for a job and its result."""

    base = "base"  # nothing: the unadapted student
    passage = "passage"  # knowledge's fixed recipe: the passage alone
    default_ttt = "default_ttt"  # ARC's fixed recipe: the task's own examples
    edit = "edit"  # seal train: a training edit of the round
    heldout = "heldout"  # seal train: a held-out edit of a teacher version
    teacher = "teacher"  # seal evaluate: the teacher's edits
    file = "file"  # seal evaluate: edits from a file


def fields_checked(cls, line: str) -> dict:
    """The row's fields: every one a field of ``cls``, and every field without a default present
    (a row written before a defaulted field was added reads with the default)."""
    raw = json.loads(line)
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    if not required <= set(raw) <= names:
        raise ValueError(f"row fields {sorted((set(raw) - names) | (required - set(raw)))} do not match {cls.__name__}")
    return raw


def mean_loglik(verdicts) -> float | None:
    """Mean over ``verdicts`` of their gold answers' log-likelihoods; None if any lacks one (or none)."""
    values = [v.loglik for v in verdicts]
    return None if not values or None in values else sum(values) / len(values)


@dataclass(frozen=True)
class QuestionVerdict:
    question: str
    gold: str
    answer: str | None  # None: not generated (a job that wanted only log-likelihoods)
    score: float | None  # None: no answer to grade
    loglik: float | None = None  # mean log-prob of the gold answer's tokens (question-style domains; see student.loglik)


@dataclass(frozen=True)
class StudentResult:
    """One student's score on one context, after one adaptation (or none, for the baseline).

    ``key`` is the idempotency key: one row per key, ever. ``score`` is the grader's mean over the
    context's questions (None when the job generated no answers: a training round rewarded on
    log-likelihood); ``baseline_score`` is the same student's unadapted score on them, and
    ``baseline_loglik`` the unadapted mean gold-answer log-likelihood (None outside question-style
    domains, and in rows written before it was recorded). ``loglik`` is this result's.
    """

    key: str
    student: str
    context_id: str
    condition: Condition
    sample: int  # index of the edit among the context's edits (0 without one)
    score: float | None
    baseline_score: float
    verdicts: tuple[QuestionVerdict, ...]
    seed: int
    grader: str
    train: dict[str, Any] = field(default_factory=dict)  # TrainStats + edit split counts; {} for base
    timings: dict[str, float] = field(default_factory=dict)  # seconds: train_s, answer_s
    baseline_loglik: float | None = None

    @property
    def loglik(self) -> float | None:
        return mean_loglik(self.verdicts)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "StudentResult":
        raw = fields_checked(cls, line)
        raw["verdicts"] = tuple(QuestionVerdict(**v) for v in raw["verdicts"])
        return cls(**raw | {"condition": Condition(raw["condition"])})


def question_values(results, metric: str) -> dict[str, list[float | None]]:
    """Context id -> each question's ``metric`` ('score' or 'loglik'), averaged over ``results`` of
    that context (its edits, its seeds; `stats.per_question`): the input of `stats.paired_by_context`."""
    from core.stats import per_question

    return per_question([(r.context_id, [getattr(v, metric) for v in r.verdicts]) for r in results])


@dataclass(frozen=True)
class SelfEdit:
    """One edit written by the teacher, with everything needed to reproduce and to train on it.

    ``prompt`` is the exact rendered prompt string (template applied, chat template if any); ReST^EM
    trains on (prompt, text) pairs, so the update sees exactly what the sampler saw. An edit sampled
    under an explored template (``teacher.explore``) also carries ``sft_prompt``, the canonical
    template's rendering of the same context: the update trains on (sft_prompt, text), which distils
    the explored forms into the canonical prompt.
    """

    edit_id: str
    context_id: str
    teacher_version: int
    round: int
    purpose: Purpose
    sample: int  # index among the k edits of this context
    template: str
    chat: bool
    prompt: str
    text: str
    n_tokens: int
    finished: bool  # ended at EOS rather than at max_new_tokens
    sampling: dict[str, Any] = field(default_factory=dict)  # greedy/temperature/top_p/max_new_tokens/seed
    sft_prompt: str | None = None  # the canonical prompt the update pairs it with; None: ``prompt``

    @property
    def train_prompt(self) -> str:
        """The prompt the ReST^EM update trains this edit under."""
        return self.prompt if self.sft_prompt is None else self.sft_prompt

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "SelfEdit":
        raw = fields_checked(cls, line)
        return cls(**raw | {"purpose": Purpose(raw["purpose"])})
