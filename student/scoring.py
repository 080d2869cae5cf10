"""The student's adapt-and-score step, written out top to bottom, for any domain.

`score_context` answers a context's queries (its questions without the passage, or an ARC task's
test input under several views) and lets the domain grade them; `adapt_and_score_many` trains a
fresh adapter per job on what the domain makes of its edit, all jobs at once (`Student.train_many`),
answers all their queries at once (`Student.respond_many`), scores each, and discards the adapters;
`adapt_and_score` is one job. Baselines (the unadapted score of a context) are cached per student,
never re-scored per edit.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from core.domains import knowledge
from core.domains.spec import TrainSpec
from core.jobs import StudentJob
from core.records import Condition, QuestionVerdict, StudentResult, mean_loglik
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


def logliks(student, domain, queries: list[list], adapters: list[int] | None = None) -> list[list[float] | None]:
    """The gold answers' log-likelihoods of ``queries[i]`` through slot ``adapters[i]``
    (`student.loglik`) for question-style domains; None per group for other domains (an ARC
    task's verdicts are not one per query)."""
    if domain.DECODE.style != "question":
        return [None] * len(queries)
    from student.loglik import loglik_many

    return loglik_many(student, queries, adapters)


def attach(verdicts: list[QuestionVerdict], values: list[float] | None) -> list[QuestionVerdict]:
    """``verdicts`` (one per query) with their log-likelihoods; as they are when ``values`` is None."""
    return list(verdicts) if values is None else [replace(v, loglik=x) for v, x in zip(verdicts, values, strict=True)]


def with_loglik(student, domain, queries: list[list], verdicts: list[list[QuestionVerdict]],
                adapters: list[int]) -> list[list[QuestionVerdict]]:
    """Each verdict with its gold answer's log-likelihood through its group's adapter."""
    return [attach(vs, xs) for vs, xs in zip(verdicts, logliks(student, domain, queries, adapters))]


def score_context(student, ctx, grade: Grade, domain=knowledge) -> tuple[tuple[QuestionVerdict, ...], float]:
    """Answer the domain's queries about ``ctx`` (the context not in the prompt); verdicts and their mean."""
    queries = domain.queries(ctx, student.cfg)
    verdicts = domain.score(ctx, queries, student.respond(queries, domain.DECODE), grade)
    (verdicts,) = with_loglik(student, domain, [queries], [verdicts], [student._slot()])
    return tuple(verdicts), sum(v.score for v in verdicts) / len(verdicts)


class Baselines:
    """Unadapted scores per context_id for one student in one domain, computed once each."""

    def __init__(self, student, grade: Grade, domain=knowledge):
        self.student, self.grade, self.domain = student, grade, domain
        self._cache: dict[str, tuple[tuple[QuestionVerdict, ...], float, float]] = {}

    def prefetch(self, ctxs) -> None:
        """Score every uncached context among ``ctxs`` in one batched pass (their queries share
        generate calls, rows through no adapter). Best effort: if it fails, `get` scores each alone."""
        new = list({c.context_id: c for c in ctxs if c.context_id not in self._cache}.values())
        if len(new) < 2:
            return
        try:
            t0 = time.perf_counter()
            qs = [self.domain.queries(c, self.student.cfg) for c in new]
            answers = self.student.respond_many(qs, self.domain.DECODE, [-1] * len(new))
            scored = [self.domain.score(c, q, a, self.grade) for c, q, a in zip(new, qs, answers)]
            scored = [tuple(v) for v in with_loglik(self.student, self.domain, qs, scored, [-1] * len(new))]
        except Exception:
            return
        dt = (time.perf_counter() - t0) / len(new)  # the pass's wall time, shared
        for c, v in zip(new, scored):
            self._cache[c.context_id] = (v, sum(x.score for x in v) / len(v), dt)

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
    return StudentResult(key=key, student=student.cfg.model, context_id=ctx.context_id, condition=Condition.base,
                         sample=0, score=score, baseline_score=score, verdicts=verdicts,
                         seed=student.cfg.train.seed if seed is None else seed,
                         grader=grader_name(student, baselines.domain),
                         timings={"answer_s": round(answer_s, 3)}, baseline_loglik=mean_loglik(verdicts))


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


def _invalid_result(student, baselines, key, job, seed, spec, base) -> StudentResult:
    verdicts = tuple(QuestionVerdict(v.question, v.gold, "", 0.0) for v in base)
    return _result(student, baselines, key, job, seed, verdicts, base, {**spec.info, "invalid": spec.invalid},
                   {"train_s": 0.0, "answer_s": 0.0})


def _result(student, baselines, key, job, seed, verdicts, base, info, timings) -> StudentResult:
    scores = [v.score for v in verdicts]
    return StudentResult(key=key, student=student.cfg.model, context_id=job.context_id,
                         condition=job.condition, sample=job.sample,
                         score=None if None in scores else sum(scores) / len(scores),
                         baseline_score=sum(v.score for v in base) / len(base), baseline_loglik=mean_loglik(base),
                         verdicts=verdicts, seed=seed, grader=grader_name(student, baselines.domain), train=info,
                         timings=timings)


def adapt_and_score_many(student, baselines: Baselines,
                         jobs: list[tuple[str, StudentJob]]) -> list[StudentResult | Exception]:
    """Train one fresh adapter per (key, job), all at once, on what the domain makes of its edits; answer
    every job's queries with its own adapter, all at once; score each; discard the adapters.

    Results come back in job order; a job that fails (its spec, its queries or its grading raised)
    gets its exception in its place and the others go on. An error inside the fused training or
    answering is every trained job's. An edit the domain will not run (an ARC config that does not
    parse, or breaks the step budget) is not trained on: it scores 0 on every query, with the reason
    in ``train['invalid']``. Several contexts in a job: the result's ``context_id`` is their ids
    joined with '+', and its scores pool all their questions.

    Timings: ``train_s`` is the job's wall seconds from the start of the fused training to its last
    step; ``answer_s`` the wall seconds of the shared answering (of the jobs with ``answer``);
    ``loglik_s`` those of the shared gold-answer log-likelihoods. ``train['group']`` is the number of
    adaptations trained together."""
    domain = baselines.domain
    out: list[StudentResult | Exception | None] = [None] * len(jobs)
    baselines.prefetch([c for _, job in jobs for c in job.contexts])
    todo = []  # (job index, seed, spec, queries per context, baseline scores)
    for i, (key, job) in enumerate(jobs):
        try:
            if job.domain != domain.NAME:
                raise ValueError(f"job {key}: a {job.domain!r} job given to a student's {domain.NAME!r} baselines")
            seed = student.cfg.train.seed if job.seed is None else job.seed
            # the job's own copy of the config: ARC seeds its data from it
            cfg = replace(student.cfg, train=replace(student.cfg.train, seed=seed))
            spec = merge_specs([domain.train_spec(c, e, job.condition, cfg)
                                for c, e in zip(job.contexts, job.edits, strict=True)])
            base = [v for c in job.contexts for v in baselines.get(c)[0]]  # the unadapted verdicts
            if not job.answer and domain.DECODE.style != "question":
                raise ValueError(f"job {key}: answer=False (log-likelihoods only) needs a question-style "
                                 f"domain; {domain.NAME!r} is graded on its answers")
            if spec.invalid:
                out[i] = _invalid_result(student, baselines, key, job, seed, spec, base)
            else:
                todo.append((i, seed, spec, [domain.queries(c, cfg) for c in job.contexts], base))
        except Exception as e:  # this job's own failure
            out[i] = e
    if not todo:
        return out
    try:
        stats = student.train_many([t[2] for t in todo], [t[1] for t in todo])
        t0 = time.perf_counter()
        flat = [[q for qs in t[3] for q in qs] for t in todo]
        asked = [k for k, t in enumerate(todo) if jobs[t[0]][1].answer]  # slots whose answers are wanted
        answers: list[list[str] | None] = [None] * len(todo)
        for k, got in zip(asked, student.respond_many([flat[k] for k in asked], domain.DECODE, asked)):
            answers[k] = got
        answer_s, t1 = time.perf_counter() - t0, time.perf_counter()
        gold_ll = logliks(student, domain, flat)
        loglik_s = time.perf_counter() - t1
    except Exception as e:  # the fused work failed: every job in it did
        for i, *_ in todo:
            out[i] = e
        return out
    finally:
        student.discard()
    for (i, seed, spec, queries, base), st, got, ll in zip(todo, stats, answers, gold_ll):
        key, job = jobs[i]
        try:
            verdicts, at = [], 0
            for c, qs in zip(job.contexts, queries):
                scored = (domain.score(c, qs, got[at:at + len(qs)], baselines.grade) if got is not None
                          else [QuestionVerdict(q.text, q.gold, None, None) for q in qs])
                verdicts += attach(scored, None if ll is None else ll[at:at + len(qs)])
                at += len(qs)
            info = {**st.__dict__, **spec.info, "group": len(todo)}
            timings = {"train_s": round(st.train_s, 3), "answer_s": round(answer_s, 3), "loglik_s": round(loglik_s, 3)}
            out[i] = _result(student, baselines, key, job, seed, tuple(verdicts), base, info, timings)
        except Exception as e:
            out[i] = e
    return out


def adapt_and_score(student, baselines: Baselines, key: str, job: StudentJob) -> StudentResult:
    """`adapt_and_score_many` with one job; its error, if any, is raised."""
    (result,) = adapt_and_score_many(student, baselines, [(key, job)])
    if isinstance(result, Exception):
        raise result
    return result
