"""A durable job queue in one SQLite file: the link between the driver and its worker processes.

No server: the driver and every worker open the same file. The contract:

- **Leased, not popped.** `lease` hands a job out for `lease_s` seconds; the job stays in the file
  until the worker `ack`s a result. A worker that dies (even by SIGKILL) simply stops renewing, and
  once the lease runs out the next `lease` call hands the job to someone else.
- **Retries and dead letters.** Each delivery is one attempt, kept in `attempts(key)`. A `nack`, or a
  lease that runs out, costs an attempt; after `max_attempts` the job is 'dead' with its last error,
  and the other jobs go on being leased (one poisoned job never stops a round).
- **Idempotent.** A job key is unique forever: putting it again does nothing; it holds one result at
  most. A late ack (its lease expired) still counts if no result exists yet; later acks return False.
- **Stale.** `drop` marks jobs the driver no longer wants (too old a teacher version, a round given
  up on) 'stale': never leased again, their acks refused.
- **No attempt left open.** A job in a final state closes its open attempt rows: 'superseded' (an
  earlier delivery's late ack finished it) or 'dropped'. Their holder may die without a word.
- **Groups.** Jobs of one `group` are leased together (`lease_group`) and acked together
  (`ack_many`, one transaction): a worker that dies mid-group leaves the whole group to be
  delivered again, so the same jobs run with the same companions (batched numbers depend on them).
- **Typed, JSON only.** A job's payload is a `StudentJob` (``put`` refuses anything else) stored as
  its `to_json` text, and a lease hands back the parsed record; results are `json.dumps` text. Never
  pickle: `sqlite3` on the command line reads the file.
- **Safe across processes.** Every write is one `BEGIN IMMEDIATE` transaction, so two workers never
  lease the same job. Each process (and thread) opens its own `Queue`: never share a connection.

Job states: pending -> leased -> done | dead | stale (leased -> pending again after a nack or expiry).
`max_attempts` belongs to the `Queue` object, not the file: the driver and workers should agree on it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from core.jobs import StudentJob

SCHEMA_VERSION = 4  # 2: jobs.grp (job groups); 3: payloads are StudentJob records; 4: conditions and
# purposes are enums, a result names its edit by `sample`
STATES = ("pending", "leased", "done", "dead", "stale")

SCHEMA = """
CREATE TABLE jobs (key TEXT PRIMARY KEY, kind TEXT NOT NULL, round INTEGER NOT NULL,
    teacher_version INTEGER NOT NULL, payload TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, lease_worker TEXT, lease_token TEXT, lease_expires REAL,
    last_error TEXT, created REAL NOT NULL, updated REAL NOT NULL, grp TEXT);
CREATE INDEX jobs_state_kind ON jobs (state, kind);
CREATE INDEX jobs_grp ON jobs (grp);
CREATE TABLE attempts (key TEXT NOT NULL, attempt INTEGER NOT NULL, worker TEXT NOT NULL,
    token TEXT NOT NULL, leased_at REAL NOT NULL, ended_at REAL, outcome TEXT, reason TEXT,
    PRIMARY KEY (key, attempt));
CREATE TABLE results (key TEXT PRIMARY KEY, result TEXT NOT NULL, worker TEXT NOT NULL,
    attempt INTEGER NOT NULL, token TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE flags (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class QueueVersionError(RuntimeError):
    """A queue file in a format this code does not read; the message says what to do."""


@dataclass(frozen=True)
class Job:
    key: str  # idempotency key, unique forever
    kind: str  # e.g. "adapt/gemma3-270m"; workers lease by kind
    payload: StudentJob
    teacher_version: int  # the teacher version that produced the job
    round: int = 0
    group: str | None = None  # jobs of one group are leased and acked together (`lease_group`)


@dataclass(frozen=True)
class Lease:
    key: str
    kind: str
    payload: StudentJob
    teacher_version: int
    round: int
    attempt: int  # 1-based attempt number of this delivery
    worker: str
    token: str  # uuid4 hex; identifies this delivery
    expires: float  # clock() seconds when the lease runs out


def _dumps(obj, key: str, what: str) -> str:
    try:
        return json.dumps(obj, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"job {key!r}: {what} is not JSON-serialisable ({e})") from None


def _payload(job: Job) -> str:
    if not isinstance(job.payload, StudentJob):
        raise TypeError(f"job {job.key!r}: the payload must be a core.jobs.StudentJob, "
                        f"not {type(job.payload).__name__}; build one with StudentJob(...)")
    return job.payload.to_json()


def _where(kinds: Sequence[str] | None, round: int | None, states: Sequence[str] | None = None,
           prefix: str = "") -> tuple[str, list]:
    clauses, params = [], []
    for column, values in (("kind", kinds), ("state", states)):
        if values is not None:
            values = _names(values, column + "s")
            clauses.append(f"{prefix}{column} IN ({','.join('?' * len(values))})")
            params += values
    if round is not None:
        clauses.append(f"{prefix}round = ?")
        params.append(round)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _names(values: Sequence[str], arg: str) -> list[str]:
    # A bare string is a sequence too: lease("w", "adapt/x", ...) would match single letters.
    if isinstance(values, str):
        raise TypeError(f"{arg} must be a sequence of strings, not the string {values!r}")
    values = list(values)
    if not values:
        raise ValueError(f"{arg} must not be empty")
    return values


class Queue:
    def __init__(self, path: str | os.PathLike, *, max_attempts: int = 3,
                 clock: Callable[[], float] = time.time):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.path, self.max_attempts, self.clock = os.fspath(path), max_attempts, clock
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        self._db.execute("PRAGMA busy_timeout = 30000")
        mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"{self.path}: could not switch to WAL mode (got {mode!r}); "
                               f"is it on a network file system?")
        # WAL + synchronous=NORMAL never corrupts the file and loses no committed transaction when a
        # process crashes; only a power cut or OS crash may drop the last commits. That is our threat.
        self._db.execute("PRAGMA synchronous = NORMAL")
        with self._write():  # checked inside the lock so that two first openers don't both create
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                old = ", written by an earlier version of this code" if version < SCHEMA_VERSION else ""
                raise QueueVersionError(
                    f"{self.path}: queue schema version {version}{old}; this code reads version {SCHEMA_VERSION}. "
                    f"Finish that run with the commit that started it (git_commit in its manifest.json), or start "
                    f"afresh with a new run_dir=PATH")

    @contextmanager
    def _write(self):
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def put(self, jobs: Iterable[Job]) -> int:
        """Insert the jobs; returns how many were new. An existing key is left untouched."""
        now = self.clock()
        rows = [(j.key, j.kind, j.round, j.teacher_version, _payload(j), now, now, j.group) for j in jobs]
        with self._write() as db:
            return sum(db.execute(
                "INSERT OR IGNORE INTO jobs (key, kind, round, teacher_version, payload, state, created, updated, grp)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)", row).rowcount for row in rows)

    def lease(self, worker: str, kinds: Sequence[str], lease_s: float) -> Lease | None:
        """Lease the oldest pending (or expired) job of one of `kinds` to `worker` for `lease_s` seconds."""
        with self._write():
            return self._lease_next(worker, kinds, lease_s, None)

    def lease_group(self, worker: str, kinds: Sequence[str], lease_s: float) -> list[Lease]:
        """Lease the oldest pending (or expired) job of one of `kinds` and every other leasable job of
        its group, oldest first, in one transaction; [] if there is none. Ack them with `ack_many`."""
        with self._write() as db:
            first = self._lease_next(worker, kinds, lease_s, None)
            if first is None:
                return []
            group = db.execute("SELECT grp FROM jobs WHERE key = ?", (first.key,)).fetchone()[0]
            out = [first]
            while group is not None and (more := self._lease_next(worker, [first.kind], lease_s, group)) is not None:
                out.append(more)
            return out

    def _lease_next(self, worker: str, kinds: Sequence[str], lease_s: float, group: str | None) -> Lease | None:
        """Inside a write transaction: lease the oldest leasable job of `kinds` (of `group`, if given)."""
        kinds = _names(kinds, "kinds")
        if not worker or not isinstance(worker, str):
            raise ValueError(f"worker must be a non-empty string, got {worker!r}")
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s}")
        db, now = self._db, self.clock()
        in_group, params = ("", []) if group is None else (" AND grp = ?", [group])
        while True:
            # rowid is insertion order: jobs are never deleted, so it only grows.
            row = db.execute(
                f"SELECT key, kind, round, teacher_version, payload, state, attempts, lease_worker,"
                f" lease_token FROM jobs WHERE kind IN ({','.join('?' * len(kinds))}){in_group} AND"
                f" (state = 'pending' OR (state = 'leased' AND lease_expires <= ?)) ORDER BY rowid LIMIT 1",
                [*kinds, *params, now]).fetchone()
            if row is None:
                return None
            key, kind, round_, version, payload, state, attempts, old_worker, old_token = row
            if state == "leased":
                self._end_attempt(key, old_token, "expired", f"lease expired (worker {old_worker})", now)
                if attempts >= self.max_attempts:
                    db.execute("UPDATE jobs SET state = 'dead', last_error = ?, lease_token = NULL,"
                               " lease_expires = NULL, updated = ? WHERE key = ?",
                               (f"lease expired on attempt {attempts} (worker {old_worker})", now, key))
                    continue
            token, expires = uuid.uuid4().hex, now + lease_s
            db.execute("UPDATE jobs SET state = 'leased', attempts = ?, lease_worker = ?, lease_token = ?,"
                       " lease_expires = ?, updated = ? WHERE key = ?",
                       (attempts + 1, worker, token, expires, now, key))
            db.execute("INSERT INTO attempts (key, attempt, worker, token, leased_at) VALUES (?, ?, ?, ?, ?)",
                       (key, attempts + 1, worker, token, now))
            return Lease(key, kind, StudentJob.from_json(payload), version, round_, attempts + 1, worker, token, expires)

    def _end_attempt(self, key: str, token: str, outcome: str, reason: str | None, now: float) -> None:
        self._db.execute("UPDATE attempts SET ended_at = ?, outcome = ?, reason = ? WHERE key = ? AND token = ?",
                         (now, outcome, reason, key, token))

    def _state(self, key: str) -> tuple[str, str | None]:
        row = self._db.execute("SELECT state, lease_token FROM jobs WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(f"no job with key {key!r} in {self.path}")
        return row

    def renew(self, lease: Lease, lease_s: float) -> bool:
        """Extend a lease still held by this delivery (even one past expiry that nobody took yet)."""
        if not lease_s > 0:
            raise ValueError(f"lease_s must be > 0, got {lease_s}")
        with self._write() as db:
            now = self.clock()
            return db.execute("UPDATE jobs SET lease_expires = ?, updated = ? WHERE key = ? AND state = 'leased'"
                              " AND lease_token = ?", (now + lease_s, now, lease.key, lease.token)).rowcount == 1

    def ack(self, lease: Lease, result: dict) -> bool:
        """Record the result of this delivery; False (and nothing stored) if the key already has one
        or the job is dead or stale."""
        return self.ack_many([(lease, result)]) == 1

    def ack_many(self, acks: Sequence[tuple[Lease, dict]]) -> int:
        """`ack` each (lease, result) pair, all in one transaction (a group's results land together or
        not at all); returns how many were recorded."""
        texts = [_dumps(result, lease.key, "result") for lease, result in acks]
        with self._write():
            now = self.clock()
            return sum(self._ack(lease, text, now) for (lease, _), text in zip(acks, texts))

    def _ack(self, lease: Lease, text: str, now: float) -> bool:
        db = self._db
        state, _ = self._state(lease.key)
        done = db.execute("SELECT attempt FROM results WHERE key = ?", (lease.key,)).fetchone()
        if state in ("dead", "stale") or done:
            # Close this delivery's row if still open, so it does not read as running forever.
            why = f"result already recorded by attempt {done[0]}" if done else f"job is {state}"
            db.execute("UPDATE attempts SET ended_at = ?, outcome = 'acked', reason = ? WHERE key = ?"
                       " AND token = ? AND outcome IS NULL", (now, f"discarded: {why}", lease.key, lease.token))
            return False
        db.execute("INSERT INTO results (key, result, worker, attempt, token, created) VALUES (?, ?, ?, ?, ?, ?)",
                   (lease.key, text, lease.worker, lease.attempt, lease.token, now))
        # A late ack after expiry overwrites 'expired': this delivery's work is the one kept.
        self._end_attempt(lease.key, lease.token, "acked", None, now)
        # The job's current holder (a later delivery) may never report back, and a done job is
        # never leased again to expire it: close its row here, or it reads as running forever.
        db.execute("UPDATE attempts SET ended_at = ?, outcome = 'superseded', reason = ? WHERE key = ?"
                   " AND outcome IS NULL", (now, f"result recorded by attempt {lease.attempt}", lease.key))
        db.execute("UPDATE jobs SET state = 'done', lease_token = NULL, lease_expires = NULL, updated = ?"
                   " WHERE key = ?", (now, lease.key))
        return True

    def nack(self, lease: Lease, reason: str) -> str:
        """This delivery failed: retry the job, or declare it dead after `max_attempts`. Returns the new state."""
        with self._write() as db:
            now = self.clock()
            state, token = self._state(lease.key)
            if state != "leased" or token != lease.token:
                return state  # an old delivery: the job has moved on without it
            self._end_attempt(lease.key, lease.token, "nacked", reason, now)
            attempts = db.execute("SELECT attempts FROM jobs WHERE key = ?", (lease.key,)).fetchone()[0]
            state = "dead" if attempts >= self.max_attempts else "pending"
            db.execute("UPDATE jobs SET state = ?, last_error = ?, lease_token = NULL, lease_expires = NULL,"
                       " updated = ? WHERE key = ?", (state, reason, now, lease.key))
            return state

    def drop(self, keys: Iterable[str], reason: str) -> int:
        """Mark unfinished jobs 'stale' (never leased again, acks refused); returns how many changed.
        The holder of a dropped job's lease has its attempt closed as 'dropped' with ``reason``."""
        with self._write() as db:
            now = self.clock()
            changed = 0
            for key in keys:
                if db.execute("UPDATE jobs SET state = 'stale', last_error = ?, lease_token = NULL,"
                              " lease_expires = NULL, updated = ? WHERE key = ? AND state IN ('pending', 'leased')",
                              (reason, now, key)).rowcount:
                    changed += 1
                    db.execute("UPDATE attempts SET ended_at = ?, outcome = 'dropped', reason = ? WHERE key = ?"
                               " AND outcome IS NULL", (now, reason, key))
            return changed

    def counts(self, kinds: Sequence[str] | None = None, round: int | None = None) -> dict[str, int]:
        where, params = _where(kinds, round)
        out = dict.fromkeys(STATES, 0)
        out.update(self._db.execute(f"SELECT state, COUNT(*) FROM jobs{where} GROUP BY state", params).fetchall())
        return out

    def unfinished(self, kinds: Sequence[str] | None = None, round: int | None = None) -> int:
        c = self.counts(kinds, round)
        return c["pending"] + c["leased"]

    def results(self, kinds: Sequence[str] | None = None, round: int | None = None) -> dict[str, dict]:
        where, params = _where(kinds, round, ["done"], prefix="j.")
        rows = self._db.execute(f"SELECT r.key, r.result FROM results r JOIN jobs j ON j.key = r.key{where}"
                                f" ORDER BY j.rowid", params)
        return {key: json.loads(text) for key, text in rows}

    def jobs(self, kinds: Sequence[str] | None = None, round: int | None = None,
             states: Sequence[str] | None = None) -> list[dict]:
        where, params = _where(kinds, round, states)
        cols = ("key", "kind", "round", "teacher_version", "state", "attempts", "last_error")
        rows = self._db.execute(f"SELECT {', '.join(cols)} FROM jobs{where} ORDER BY rowid", params)
        return [dict(zip(cols, r)) for r in rows]

    def attempts(self, key: str) -> list[dict]:
        """Deliveries of `key`, oldest first; outcome None while running, else acked | nacked | expired,
        or superseded (an earlier delivery's late ack finished the job) | dropped (the job went stale)."""
        cols = ("attempt", "worker", "token", "leased_at", "ended_at", "outcome", "reason")
        rows = self._db.execute(f"SELECT {', '.join(cols)} FROM attempts WHERE key = ? ORDER BY attempt", (key,))
        return [dict(zip(cols, r)) for r in rows]

    def set_flag(self, name: str, value: str) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO flags (name, value) VALUES (?, ?)", (name, value))

    def get_flag(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM flags WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Queue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
