"""The one lease loop every launcher drives: lease a group of jobs, drop the stale ones, renew the
leases while the group runs, ack its results in one transaction, nack its failures.

A `seal worker` process (and an inline worker) drives a `Delivery` itself, with a `Renewer` thread;
the Ray driver drives one per student actor on the actor's behalf, so actors never open the queue
file. Either way the same jobs run together, in the groups the driver fixed when it put them
(`Queue.lease_group`), and the same rules decide what is stale, retried or dead.

Staleness: an edit written by teacher version v may be scored while the teacher is at most
``max_teacher_lag`` versions newer. The newest version and the bound are queue flags the driver
sets, so every launcher applies the same rule from the same ledger, and the reason is recorded on
the dropped job. The domain's reference conditions score no edit and are never stale.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.jobs import StudentJob
from core.queue import Lease, Queue
from core.records import StudentResult

STOP_FLAG = "stop"  # the driver sets this flag to "1" to stop workers started with until="stopped"
VERSION_FLAG = "teacher_version"  # the driver publishes the teacher's newest version here ...
LAG_FLAG = "max_teacher_lag"  # ... and the staleness bound here (unset: no bound)


def stale_reason(q: Queue, lease: Lease) -> str | None:
    """Why a leased job is too stale to score, or None to score it."""
    from core import domains

    newest, lag = q.get_flag(VERSION_FLAG), q.get_flag(LAG_FLAG)
    if newest is None or lag is None or lease.payload.condition in domains.get(lease.payload.domain).REFERENCE:
        return None
    if int(newest) - lease.teacher_version > int(lag):
        return (f"stale: edit of teacher v{lease.teacher_version} scored while the teacher is at v{newest}, "
                f"beyond max_teacher_lag={lag}")
    return None


def failure(e: BaseException) -> str:
    """A failed job's reason, as the queue records it."""
    return f"{type(e).__name__}: {e}"


@dataclass
class Delivery:
    """A group of leased jobs, from lease to ack, for one worker."""

    leases: list[Lease]
    lease_s: float
    renewed: float = field(default_factory=time.monotonic)

    @classmethod
    def take(cls, q: Queue, worker: str, kind: str, lease_s: float) -> "Delivery | None":
        """Lease the next group of ``kind`` for ``worker``, dropping its stale jobs. None: nothing is
        leasable now; a delivery with no leases: all it leased was stale (take again)."""
        leases = q.lease_group(worker, [kind], lease_s)
        if not leases:
            return None
        live = []
        for lease in leases:
            reason = stale_reason(q, lease)
            if reason is None:
                live.append(lease)
            else:
                q.drop([lease.key], reason)
        return cls(live, lease_s)

    @property
    def jobs(self) -> list[tuple[str, StudentJob]]:
        """(key, job) of each leased job, in lease order: what the worker runs."""
        return [(lease.key, lease.payload) for lease in self.leases]

    def renew(self, q: Queue) -> None:
        """Extend every lease of the group (one held by a later delivery now is not: our ack of it
        cannot count twice)."""
        for lease in self.leases:
            q.renew(lease, self.lease_s)
        self.renewed = time.monotonic()

    def renew_due(self, q: Queue) -> None:
        """`renew` once a third of ``lease_s`` has passed since the last renewal."""
        if time.monotonic() - self.renewed > self.lease_s / 3:
            self.renew(q)

    def finish(self, q: Queue, outcomes: list[StudentResult | str]) -> int:
        """Ack the group's results in one transaction (a worker that dies before it leaves the whole
        group to be redone) and nack each failure with its reason (a str: the job failed, not the
        worker; it is retried, then dead-lettered). Returns how many results were recorded."""
        if len(outcomes) != len(self.leases):
            raise ValueError(f"{len(outcomes)} outcomes for a group of {len(self.leases)} jobs")
        acked = q.ack_many([(lease, json.loads(r.to_json())) for lease, r in zip(self.leases, outcomes)
                            if isinstance(r, StudentResult)])
        for lease, r in zip(self.leases, outcomes):
            if isinstance(r, str):
                q.nack(lease, r)
        return acked

    def fail(self, q: Queue, reason: str) -> None:
        """The whole group failed (its worker died, or its call raised): nack every job now."""
        for lease in self.leases:
            q.nack(lease, reason)


class Renewer(threading.Thread):
    """Renews a delivery's leases every third of ``lease_s`` while it runs in another thread
    (SQLite connections are per thread, so it opens its own)."""

    def __init__(self, queue_path: Path, delivery: Delivery):
        super().__init__(daemon=True)
        self.queue_path, self.delivery = queue_path, delivery
        self.done = threading.Event()

    def run(self) -> None:
        with Queue(self.queue_path) as q:
            while not self.done.wait(self.delivery.lease_s / 3):
                self.delivery.renew(q)

    def __enter__(self) -> "Renewer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.join()
