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


def adapt_and_score(student, baselines: Baselines, ctxs: list[Context], edits: list[str], *, condition: str,
                    completion: int, grader: str, key: str, append_passage: bool | None = None) -> StudentResult:
    """Train one fresh adapter on the edits of ``ctxs`` (each split into sequences), score every
    context's questions with it, discard it.

    One context is the usual case. Several at once is the continued-pretraining setting (one
    adaptation on the edits of n contexts, scored on all their questions); the result's
    ``context_id`` is then the ids joined with '+', and its scores pool all the questions.
    """
    train = student.cfg.train
    append = train.append_passage if append_passage is None else append_passage
    seqs = [edit_to_sequences(c.title, c.context, e, append_passage=append, max_sequences=train.max_sequences)
            for c, e in zip(ctxs, edits, strict=True)]
    base = [v.score for c in ctxs for v in baselines.get(c)[0]]
    with student.adapted([x for s in seqs for x in s.sequences]) as stats:
        t0 = time.perf_counter()
        verdicts = tuple(v for c in ctxs for v in score_context(student, c, baselines.grade)[0])
        answer_s = time.perf_counter() - t0
    info = {**stats.__dict__, "n_items": sum(s.n_items for s in seqs), "n_dropped": sum(s.n_dropped for s in seqs)}
    return StudentResult(key=key, student=student.cfg.model, context_id="+".join(c.context_id for c in ctxs),
                         condition=condition, completion=completion, score=sum(v.score for v in verdicts) / len(verdicts),
                         baseline_score=sum(base) / len(base), verdicts=verdicts, seed=train.seed, grader=grader,
                         train=info, timings={"train_s": round(stats.train_s, 3), "answer_s": round(answer_s, 3)})
