"""Who does the work, and what they are given: the teacher's backend and the student workers (in
this process, as `seal worker` processes, or as Ray actors), the students' jobs of `seal train` and
`seal evaluate`, their fixed groups, and the collection of their results."""

from __future__ import annotations

import json
from pathlib import Path

from core import domains
from core import rewards as R
from core.contexts import Context
from core.faults import fault
from core.jobs import StudentJob, job_kind
from core.models import trim_cpu_memory
from core.queue import Job, Queue
from core.records import Condition, Purpose, SelfEdit, StudentResult
from core.runs import append_jsonl
from orchestration.keys import CondKey, JobKey
from teacher.writer import WantedEdit, write_run_edits


def make_workers(cfg, run: Path, ray: bool = False):
    """Who runs the student workers of ``cfg``: Ray actors (``ray``: `seal train`'s launcher=ray),
    threads of this process (workers.mode: inline) or `seal worker` processes."""
    from orchestration.launch import InlineWorkers, ProcessWorkers

    if ray:
        from orchestration.ray_launch import RayWorkers

        return RayWorkers(cfg, run)
    if cfg.workers.mode == "inline":
        return InlineWorkers(cfg, run)
    return ProcessWorkers(cfg, run)


def teacher_backend(cfg, model: str, ray: bool = False):
    """The teacher's generation backend for ``model``: in this process, or a Ray actor (``ray``).
    Both implement `teacher.backend.Backend`."""
    if ray:
        from orchestration.ray_launch import RayTeacherBackend

        return RayTeacherBackend(cfg, model)
    from teacher.transformers_backend import make_backend

    return make_backend(model, cfg.teacher, cache=cfg.models_cache)


def generate_edits(cfg, run: Path, r: int, version: int, model: str, wanted: list[WantedEdit],
                   edits: dict[str, SelfEdit], ray: bool = False) -> None:
    """Teacher version ``version`` (``model``) writes the missing edits of ``wanted`` into the run
    (`teacher.writer.write_run_edits`); its backend starts only if one is missing."""
    if all(w.edit_id in edits for w in wanted):
        return
    backend = teacher_backend(cfg, model, ray)
    try:
        write_run_edits(backend, cfg.teacher, cfg.data.domain, run, r, version, wanted, edits,
                        sampled_heldout=cfg.eval.sampled)
    finally:
        backend.close()
        trim_cpu_memory()


def train_jobs(cfg, students, r: int, version: int, wanted: list[WantedEdit], heldout: list[Context],
               edits: dict[str, SelfEdit]) -> list[Job]:
    """Every student's jobs of a `seal train` step: the reference conditions (the held-out ones once
    per run; each training context's fixed recipe, for its gains), and one job per wanted edit,
    carrying its text and the version that wrote it (async rounds: an older one)."""
    domain = domains.get(cfg.data.domain)
    # A training context's jobs feed only its rewards: under the loglik signal they need no answers
    # (generating them cost most of an adaptation's scoring). Held-out contexts always answer, for F1.
    loglik_only = cfg.reward.signal == R.Signal.loglik
    train_ctxs = list({w.context.context_id: w.context for w in wanted if w.purpose == Purpose.train}.values())
    refs = [(c, Condition(cond), True) for c in heldout for cond in domain.REFERENCE] if r == 0 else []  # once
    if cfg.reward.baseline == "reference":
        refs += [(c, Condition(domain.REFERENCE[1]), not loglik_only) for c in train_ctxs]
    jobs = []
    for _, s in students:
        kind = job_kind(s.model)
        # the adaptation seed travels with the job: a worker never reads it from shared state
        for c, cond, answer in refs:
            job = StudentJob(domain.NAME, cond, (c,), ("",), seed=s.train.seed, answer=answer)
            jobs.append(Job(str(JobKey.reference(cond, c.context_id, s.model)), kind, job, version, r))
        for w in wanted:
            e, train = edits[w.edit_id], w.purpose == Purpose.train
            cond = Condition.edit if train else Condition.heldout
            job = StudentJob(domain.NAME, cond, (w.context,), (e.text,), edit_id=w.edit_id, sample=w.sample,
                             seed=s.train.seed, answer=not (train and loglik_only))
            jobs.append(Job(str(JobKey.of_edit(w.edit_id, s.model)), kind, job, e.teacher_version, r))
    return jobs


def evaluate_jobs(cfg, contexts: list[Context], teacher_edits: dict[str, list[SelfEdit]],
                  file_edits: dict[str, list[str]]) -> list[Job]:
    """Every job of `seal evaluate`: one per (student, group of contexts, condition, edit, seed);
    base once per (student, context). A group is one context, or ``multi_passage`` of them trained
    together on their i-th edits."""
    n = cfg.multi_passage
    domain = domains.get(cfg.data.domain)
    recipe = Condition(domain.REFERENCE[1])
    groups = [contexts[i:i + n] for i in range(0, len(contexts), n)]
    jobs = []
    for s in cfg.students:
        kind = job_kind(s.model)

        def job(cond, group, edits, sample=None, seed=None):
            key = CondKey(cond, tuple(c.context_id for c in group), seed, sample)
            task = StudentJob(domain.NAME, cond, tuple(group), tuple(edits), sample=sample or 0, seed=seed)
            return Job(str(JobKey(key, s.model)), kind, task, teacher_version=0)

        if Condition.base in cfg.conditions:
            jobs += [job(Condition.base, [c], [""]) for c in contexts]
        for group in groups:
            teacher = [teacher_edits.get(c.context_id, []) for c in group]
            files = [file_edits.get(c.context_id, []) if Condition.file in cfg.conditions else [] for c in group]
            for seed in cfg.seeds:
                if recipe in cfg.conditions:
                    jobs.append(job(recipe, group, [""] * len(group), seed=seed))
                for i in range(min(map(len, teacher))):  # the i-th edit of every context in the group
                    jobs.append(job(Condition.teacher, group, [t[i].text for t in teacher], i, seed))
                for i in range(min(map(len, files))):
                    jobs.append(job(Condition.file, group, [f[i] for f in files], i, seed))
    return jobs


def grouped(jobs: list[Job], size: int) -> list[Job]:
    """``jobs`` with fixed groups: each student's jobs (one queue kind each), in key order, cut into
    groups of up to ``size``, which a worker leases, runs together (K adaptations in one pass) and
    acks together. Fixed by the driver, so a job always runs with the same companions, whichever
    worker takes it and however often: results never depend on timing."""
    from dataclasses import replace

    out = {j.key: j for j in jobs}
    for kind in dict.fromkeys(j.kind for j in jobs):
        keys = sorted(j.key for j in jobs if j.kind == kind)
        for start in range(0, len(keys), size):
            members = keys[start:start + size]
            for key in members:
                out[key] = replace(out[key], group=f"{members[0]}+{len(members)}")
    return [out[j.key] for j in jobs]


def collect(q: Queue, keys: set[str], run: Path, exported: set[str]) -> dict[str, StudentResult]:
    """Results of ``keys`` from the queue; new ones are appended to results.jsonl."""
    out = {}
    for key, raw in q.results().items():
        if key in keys:
            out[key] = StudentResult.from_json(json.dumps(raw))
            if key not in exported:
                append_jsonl(run / "results.jsonl", out[key].to_json())
                exported.add(key)
                fault("result")
    return out
