"""The student's adapt-and-score step, written out top to bottom.

`score_context` answers a context's questions without the passage and grades them;
`adapt_and_score` trains a fresh adapter on an edit's sequences, scores, and discards the adapter.
Baselines (the unadapted score of a context) are cached per student, never re-scored per edit.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from orchestration.core.contexts import Context
from orchestration.core.records import QuestionVerdict, StudentResult
from student.graders import GRADERS
from student.sequences import edit_to_sequences

Grade = Callable[[list[tuple[str, str, str]]], list[float]]  # [(question, gold, answer)] -> scores


def make_grader(name: str, judge_cfg=None, cache_path: str | Path | None = None) -> Grade:
    if name == "judge":
        from student.judge import JudgeGrader

        return JudgeGrader(judge_cfg, cache_path=judge_cfg.cache_path or cache_path).grade_many
    if name not in GRADERS:
        raise ValueError(f"student.grader={name!r} is unknown; use one of {sorted(GRADERS) + ['judge']}")
    fn = GRADERS[name]
    return lambda items: [fn(answer, gold) for _, gold, answer in items]


def score_context(student, ctx: Context, grade: Grade) -> tuple[tuple[QuestionVerdict, ...], float]:
    """Answer every question of ``ctx`` (passage not in the prompt); return verdicts and their mean."""
    answers = student.answer([q.question for q in ctx.questions])
    scores = grade([(q.question, q.answer, a) for q, a in zip(ctx.questions, answers)])
    verdicts = tuple(QuestionVerdict(q.question, q.answer, a, s) for q, a, s in zip(ctx.questions, answers, scores))
    return verdicts, sum(scores) / len(scores)


class Baselines:
    """Unadapted scores per context_id for one student, computed once each."""

    def __init__(self, student, grade: Grade):
        self.student, self.grade = student, grade
        self._cache: dict[str, tuple[tuple[QuestionVerdict, ...], float, float]] = {}

    def get(self, ctx: Context):
        """(verdicts, mean score, answer seconds) of the unadapted student on ``ctx``."""
        if ctx.context_id not in self._cache:
            t0 = time.perf_counter()
            verdicts, score = score_context(self.student, ctx, self.grade)
            self._cache[ctx.context_id] = (verdicts, score, time.perf_counter() - t0)
        return self._cache[ctx.context_id]


def base_result(student, baselines: Baselines, ctx: Context, grader: str, key: str) -> StudentResult:
    verdicts, score, answer_s = baselines.get(ctx)
    return StudentResult(key=key, student=student.cfg.model, context_id=ctx.context_id, condition="base",
                         completion=0, score=score, baseline_score=score, verdicts=verdicts,
                         seed=student.cfg.train.seed, grader=grader, timings={"answer_s": round(answer_s, 3)})


def adapt_and_score(student, baselines: Baselines, ctx: Context, edit: str, *, condition: str,
                    completion: int, grader: str, key: str, append_passage: bool | None = None) -> StudentResult:
    """Train a fresh adapter on ``edit`` (split into sequences), score ``ctx`` with it, discard it."""
    train = student.cfg.train
    _, baseline, _ = baselines.get(ctx)
    seqs = edit_to_sequences(ctx.title, ctx.context, edit,
                             append_passage=train.append_passage if append_passage is None else append_passage,
                             max_sequences=train.max_sequences)
    with student.adapted(list(seqs.sequences)) as stats:
        t0 = time.perf_counter()
        verdicts, score = score_context(student, ctx, baselines.grade)
        answer_s = time.perf_counter() - t0
    info = {**stats.__dict__, "n_items": seqs.n_items, "n_dropped": seqs.n_dropped}
    return StudentResult(key=key, student=student.cfg.model, context_id=ctx.context_id, condition=condition,
                         completion=completion, score=score, baseline_score=baseline, verdicts=verdicts,
                         seed=train.seed, grader=grader, train=info,
                         timings={"train_s": round(stats.train_s, 3), "answer_s": round(answer_s, 3)})
