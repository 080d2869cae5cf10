"""The student's adapt-and-score step, written out top to bottom, for any domain.

`score_context` answers a context's queries (its questions without the passage, or an ARC task's
test input under several views) and lets the domain grade them; `adapt_and_score` trains a fresh
adapter on what the domain makes of an edit, scores, and discards the adapter. Baselines (the
unadapted score of a context) are cached per student, never re-scored per edit.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from orchestration.core.domains import knowledge
from orchestration.core.domains.spec import TrainSpec
from orchestration.core.records import QuestionVerdict, StudentResult
from student.graders import GRADERS

Grade = Callable[[list[tuple[str, str, str]]], list[float]]  # [(question, gold, answer)] -> scores


def make_grader(name: str, judge_cfg=None, cache_path: str | Path | None = None) -> Grade:
    if name == "judge":
        from student.judge import JudgeGrader

        return JudgeGrader(judge_cfg, cache_path=judge_cfg.cache_path or cache_path).grade_many
    if name not in GRADERS:
        raise ValueError(f"student.grader={name!r} is unknown; use one of {sorted(GRADERS) + ['judge']}")
    fn = GRADERS[name]
    return lambda items: [fn(answer, gold) for _, gold, answer in items]


def score_context(student, ctx, grade: Grade, domain=knowledge) -> tuple[tuple[QuestionVerdict, ...], float]:
    """Answer the domain's queries about ``ctx`` (the context not in the prompt); verdicts and their mean."""
    queries = domain.queries(ctx, student.cfg)
    verdicts = tuple(domain.score(ctx, queries, student.respond(queries, domain.DECODE), grade))
    return verdicts, sum(v.score for v in verdicts) / len(verdicts)


class Baselines:
    """Unadapted scores per context_id for one student in one domain, computed once each."""

    def __init__(self, student, grade: Grade, domain=knowledge):
        self.student, self.grade, self.domain = student, grade, domain
        self._cache: dict[str, tuple[tuple[QuestionVerdict, ...], float, float]] = {}

    def get(self, ctx):
        """(verdicts, mean score, answer seconds) of the unadapted student on ``ctx``."""
        if ctx.context_id not in self._cache:
            t0 = time.perf_counter()
            verdicts, score = score_context(self.student, ctx, self.grade, self.domain)
            self._cache[ctx.context_id] = (verdicts, score, time.perf_counter() - t0)
        return self._cache[ctx.context_id]


def grader_name(student, domain) -> str:
    return domain.GRADER or student.cfg.grader


def base_result(student, baselines: Baselines, ctx, key: str, seed: int | None = None) -> StudentResult:
    """The unadapted student on ``ctx``; ``seed`` is the job's (recorded only: nothing is trained)."""
    verdicts, score, answer_s = baselines.get(ctx)
    return StudentResult(key=key, student=student.cfg.model, context_id=ctx.context_id, condition="base",
                         completion=0, score=score, baseline_score=score, verdicts=verdicts,
                         seed=student.cfg.train.seed if seed is None else seed,
                         grader=grader_name(student, baselines.domain),
                         timings={"answer_s": round(answer_s, 3)})


def merge_specs(specs: list[TrainSpec]) -> TrainSpec:
    """One spec for the edits of several contexts (multi-passage): the data joined, counts summed,
    the first spec's overrides; invalid if any part is."""
    bad = [s.invalid for s in specs if s.invalid]
    info: dict = {}
    for s in specs:
        for k, v in s.info.items():
            info[k] = info.get(k, 0) + v if isinstance(v, int) and not isinstance(v, bool) else v
    return TrainSpec(sequences=tuple(x for s in specs for x in s.sequences), pairs=tuple(p for s in specs for p in s.pairs),
                     prompt_loss=specs[0].prompt_loss, learning_rate=specs[0].learning_rate, epochs=specs[0].epochs,
                     info=info, invalid="; ".join(bad) or None)


def adapt_and_score(student, baselines: Baselines, ctxs: list, edits: list[str], *, condition: str,
                    completion: int, key: str, seed: int | None = None) -> StudentResult:
    """Train one fresh adapter on what the domain makes of the edits of ``ctxs``, score every
    context's queries with it, discard it.

    One context is the usual case. Several at once is the continued-pretraining setting (one
    adaptation on the edits of n contexts, scored on all their questions); the result's
    ``context_id`` is then the ids joined with '+', and its scores pool all the questions.
    An edit the domain will not run (an ARC config that does not parse, or breaks the step budget)
    is not trained on: it scores 0 on every query, and the reason is in ``train['invalid']``.
    """
    domain = baselines.domain
    seed = student.cfg.train.seed if seed is None else seed
    cfg = replace(student.cfg, train=replace(student.cfg.train, seed=seed))  # this job's copy: ARC seeds its data
    spec = merge_specs([domain.train_spec(c, e, condition, cfg) for c, e in zip(ctxs, edits, strict=True)])
    base = [v.score for c in ctxs for v in baselines.get(c)[0]]
    if spec.invalid:
        verdicts = tuple(QuestionVerdict(v.question, v.gold, "", 0.0) for c in ctxs for v in baselines.get(c)[0])
        info, timings = {**spec.info, "invalid": spec.invalid}, {"train_s": 0.0, "answer_s": 0.0}
    else:
        with student.adapted(spec, seed=seed) as stats:
            t0 = time.perf_counter()
            verdicts = tuple(v for c in ctxs for v in score_context(student, c, baselines.grade, domain)[0])
            answer_s = time.perf_counter() - t0
        info = {**stats.__dict__, **spec.info}
        timings = {"train_s": round(stats.train_s, 3), "answer_s": round(answer_s, 3)}
    return StudentResult(key=key, student=student.cfg.model, context_id="+".join(c.context_id for c in ctxs),
                         condition=condition, completion=completion, score=sum(v.score for v in verdicts) / len(verdicts),
                         baseline_score=sum(base) / len(base), verdicts=verdicts, seed=seed,
                         grader=grader_name(student, domain), train=info, timings=timings)
