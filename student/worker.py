"""Student worker: serves the jobs of one student model from a run's queue.

The model is loaded once per worker and unadapted baselines are cached per context, so a job costs
one adaptation: train a fresh adapter on the job's edit, answer the context's questions without the
passage, grade, discard the adapter. A job (`core.records.StudentJob`) carries the
whole context (passage and questions), so a worker needs nothing from the driver but the queue file.

The lease loop is `core.delivery`'s, shared with the Ray launcher: a worker leases a
group of jobs, a background thread renews the leases while the group runs (a worker that dies stops
renewing, so its jobs are delivered again once the leases run out), the group's results are acked
in one transaction, and a job that raised is nacked with the exception as its reason (retried up to
the queue's limit, then dead-lettered). Results are acked under the job key, so a re-delivered job
never counts twice.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from core.delivery import STOP_FLAG, Delivery, Renewer, failure
from core.faults import fault
from core.jobs import StudentJob, job_kind
from core.queue import Queue
from core.records import Condition, StudentResult
from student.config import StudentConfig


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
        from core import domains
        from student.scoring import Baselines

        if domain not in self.baselines:
            self.baselines[domain] = Baselines(self.student, self.grade, domains.get(domain))
        return self.baselines[domain]

    def run_group(self, jobs: list[tuple[str, StudentJob]]) -> list[StudentResult | Exception]:
        """The results of a group of (key, job), in order: base jobs answer with the bare model;
        every adaptation is trained and answered in one pass (`adapt_and_score_many`, K adapters at
        once). A job that failed has its exception in its place: it is that job's failure, not its
        companions'."""
        from student.scoring import adapt_and_score_many, base_result

        out: list[StudentResult | Exception | None] = [None] * len(jobs)
        adapt: dict[str, list[int]] = {}  # domain -> the indices of its adaptations
        for i, (key, job) in enumerate(jobs):
            try:
                if job.condition == Condition.base:
                    (ctx,) = job.contexts
                    out[i] = base_result(self.student, self.baselines_of(job.domain), ctx, key, job.seed)
                else:
                    self.baselines_of(job.domain)  # an unknown domain is this job's failure
                    adapt.setdefault(job.domain, []).append(i)
            except Exception as e:
                out[i] = e
        for domain, todo in adapt.items():
            for i, r in zip(todo, adapt_and_score_many(self.student, self.baselines_of(domain), [jobs[i] for i in todo])):
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
                delivery = Delivery.take(q, self.worker_id, self.kind, lease_s)
                if delivery is None:
                    if until == "drained" and q.unfinished([self.kind]) == 0:
                        break
                    time.sleep(poll_s)
                    continue
                if not delivery.leases:  # every job it leased was stale, and dropped
                    continue
                with Renewer(queue_path, delivery):
                    results = self.run_group(delivery.jobs)
                    fault("lease")
                acked += delivery.finish(q, [failure(r) if isinstance(r, Exception) else r for r in results])
        return acked
