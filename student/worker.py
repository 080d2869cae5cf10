"""Student worker: serves adapt jobs for one student model from a run's queue.

The model is loaded once per worker and unadapted baselines are cached per context, so a job costs
one adaptation: train a fresh adapter on the job's edit, answer the context's questions without the
passage, grade, discard the adapter. A job's payload carries the whole context (passage and
questions), so a worker needs nothing from the driver but the queue file.

While a job runs, a background thread renews its lease every third of ``lease_s``: a long adaptation
keeps its lease, and a worker that dies stops renewing, so its job is delivered again once the lease
runs out. A job that raises is nacked with the exception as its reason; the queue retries it up to
its limit, then dead-letters it. Results are acked under the job key, so a re-delivered job never
counts twice.

Job payload: {"domain": "knowledge" (default) | "arc", "context": the domain's to_json(ctx),
"condition": "base" | "passage" | "default_ttt" | "edit" | "heldout",
"edit": text ("" for base and passage), "edit_id": str | None, "sample": int, and optionally
"seed": the adaptation seed and "answer": false (log-likelihoods only, no answers generated)}. A multi-passage job has "contexts" and "edits" (lists) instead of
"context" and "edit".
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from orchestration.core.faults import fault
from orchestration.core.queue import Lease, Queue
from orchestration.core.records import StudentResult
from student.config import StudentConfig

STOP_FLAG = "stop"  # the driver sets this flag to "1" to stop workers started with until="stopped"
VERSION_FLAG = "teacher_version"  # the driver publishes the teacher's newest version here ...
LAG_FLAG = "max_teacher_lag"  # ... and the staleness bound here (unset: no bound)


def stale_reason(q: Queue, lease: Lease) -> str | None:
    """Why a leased edit job is too stale to score, or None to score it.

    An edit written by teacher version v may be scored while the teacher is at most
    ``max_teacher_lag`` versions newer. The bound and the newest version are queue flags the driver
    sets, so every launcher (local processes, inline, Ray) applies the same rule from the same
    ledger, and the reason is recorded on the dropped job.
    """
    from orchestration.core import domains

    newest, lag = q.get_flag(VERSION_FLAG), q.get_flag(LAG_FLAG)
    # the domain's reference conditions (knowledge: base, passage; ARC: base, default_ttt) score no
    # edit, so they are never stale
    reference = domains.get(lease.payload.get("domain", "knowledge")).REFERENCE
    if newest is None or lag is None or lease.payload.get("condition") in reference:
        return None
    if int(newest) - lease.teacher_version > int(lag):
        return (f"stale: edit of teacher v{lease.teacher_version} scored while the teacher is at v{newest}, "
                f"beyond max_teacher_lag={lag}")
    return None


def job_kind(student: str) -> str:
    """Queue kind of the adapt jobs of one student (each student's workers serve only their own)."""
    return f"adapt/{student}"


class _Renewer(threading.Thread):
    """Keeps a group's leases alive while it runs; SQLite connections are per thread, so it opens its own."""

    def __init__(self, queue_path: Path, leases: list[Lease], lease_s: float):
        super().__init__(daemon=True)
        self.queue_path, self.leases, self.lease_s = queue_path, leases, lease_s
        self.done = threading.Event()

    def run(self) -> None:
        with Queue(self.queue_path) as q:
            while not self.done.wait(self.lease_s / 3):
                # a lease someone else holds now is not renewed; our ack of it will not count twice
                for lease in self.leases:
                    q.renew(lease, self.lease_s)


class Worker:
    """One student model, loaded once, serving its adapt jobs."""

    def __init__(self, cfg: StudentConfig, *, cache: str | None = None, worker_id: str | None = None,
                 judge_cache: str | Path | None = None):
        from student.model import Student
        from student.scoring import make_grader

        self.cfg = cfg
        self.kind = job_kind(cfg.model)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{cfg.model}"
        self.student = Student(cfg, cache=cache)
        self.grade = make_grader(cfg.grader, cfg.judge, judge_cache)
        self.baselines: dict = {}  # domain name -> its Baselines

    def baselines_of(self, domain: str):
        """This student's baseline cache in ``domain`` (one per domain, so ids never collide)."""
        from orchestration.core import domains
        from student.scoring import Baselines

        if domain not in self.baselines:
            self.baselines[domain] = Baselines(self.student, self.grade, domains.get(domain))
        return self.baselines[domain]

    def run_job(self, payload: dict, key: str) -> StudentResult:
        """One job alone (a group of one); its error is raised."""
        (result,) = self.run_group([(key, payload)])
        if isinstance(result, Exception):
            raise result
        return result

    def run_group(self, jobs: list[tuple[str, dict]]) -> list[StudentResult | Exception]:
        """The results of a group of (key, payload) jobs, in order: base jobs answer with the bare
        model; every adaptation is trained and answered in one pass (`adapt_and_score_many`, K
        adapters at once). A job that failed has its exception in its place: it is that job's
        failure, not its companions'."""
        from student.scoring import AdaptJob, adapt_and_score_many, base_result

        out: list[StudentResult | Exception | None] = [None] * len(jobs)
        adapt: dict[str, list[tuple[int, AdaptJob]]] = {}  # domain -> its adaptations
        for i, (key, payload) in enumerate(jobs):
            try:
                domain = payload.get("domain", "knowledge")
                load = self.baselines_of(domain).domain.from_json
                # the job's own seed (seal train and `seal evaluate seeds=[...]` set it); else the config's
                seed = payload.get("seed", self.cfg.train.seed)
                if payload["condition"] == "base":
                    out[i] = base_result(self.student, self.baselines_of(domain), load(payload["context"]), key, seed)
                    continue
                if "contexts" in payload:  # multi-passage: one adaptation on the edits of several contexts
                    ctxs, edits = [load(c) for c in payload["contexts"]], payload["edits"]
                else:
                    ctxs, edits = [load(payload["context"])], [payload["edit"]]
                adapt.setdefault(domain, []).append((i, AdaptJob(tuple(ctxs), tuple(edits), payload["condition"],
                                                                 payload["sample"], key, seed,
                                                                 payload.get("answer", True))))
            except Exception as e:
                out[i] = e
        for domain, todo in adapt.items():
            results = adapt_and_score_many(self.student, self.baselines_of(domain), [job for _, job in todo])
            for (i, _), r in zip(todo, results):
                out[i] = r
        return out

    def serve(self, queue_path: str | Path, *, lease_s: float, until: str = "drained", poll_s: float = 0.5,
              parent_pid: int | None = None, max_jobs: int | None = None, max_attempts: int = 3) -> int:
        """Lease, run and ack jobs of this student; returns the number of jobs acked.

        ``until="drained"``: return when none of this student's jobs is pending or leased.
        ``until="stopped"``: keep polling until the queue's stop flag is set (or, with ``parent_pid``,
        until that process is gone: a worker never outlives the driver that started it).
        ``max_attempts`` must be the driver's (the queue applies the retry limit of whoever nacks).
        """
        if until not in ("drained", "stopped"):
            raise ValueError(f"until={until!r}: use 'drained' or 'stopped'")
        queue_path = Path(queue_path)
        acked = 0
        with Queue(queue_path, max_attempts=max_attempts) as q:
            while max_jobs is None or acked < max_jobs:
                if until == "stopped" and q.get_flag(STOP_FLAG) == "1":
                    break
                if parent_pid is not None and os.getppid() != parent_pid:
                    break
                leases = q.lease_group(self.worker_id, [self.kind], lease_s)
                if not leases:
                    if until == "drained" and q.unfinished([self.kind]) == 0:
                        break
                    time.sleep(poll_s)
                    continue
                live = []
                for lease in leases:
                    reason = stale_reason(q, lease)
                    if reason is not None:
                        q.drop([lease.key], reason)
                    else:
                        live.append(lease)
                if not live:
                    continue
                renewer = _Renewer(queue_path, live, lease_s)
                renewer.start()
                try:
                    results = self.run_group([(lease.key, lease.payload) for lease in live])
                    fault("lease")
                finally:
                    renewer.done.set()
                    renewer.join()
                # one transaction: a worker that dies before it leaves the whole group to be redone
                acked += q.ack_many([(lease, json.loads(r.to_json())) for lease, r in zip(live, results)
                                     if not isinstance(r, Exception)])
                for lease, r in zip(live, results):
                    if isinstance(r, Exception):  # the job failed, not the worker: record why and go on
                        q.nack(lease, f"{type(r).__name__}: {r}")
        return acked
