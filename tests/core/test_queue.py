"""The SQLite job queue: real files under tmp_path, a fake clock for expiry, real processes for
concurrency and for a worker killed mid-job."""

import multiprocessing as mp
import os
import signal
import sqlite3
import time

import pytest

from core.contexts import QA, Context
from core.jobs import StudentJob
from core.queue import Job, Queue

SPAWN = mp.get_context("spawn")


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


CTX = Context("c1", "Title", "A passage.", (QA("A question?", "An answer"),))


def task(sample: int = 0, edit_id: str | None = None) -> StudentJob:
    return StudentJob("knowledge", "edit", (CTX,), ("An edit.",), edit_id=edit_id, sample=sample)


def job(key, kind="adapt/a", sample=0):
    return Job(key=key, kind=kind, payload=task(sample, edit_id=key), teacher_version=1)


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def q(tmp_path, clock):
    with Queue(tmp_path / "q.sqlite", clock=clock) as queue:
        yield queue


def test_put_is_idempotent_and_keeps_first_payload(q):
    assert q.put([job("k1", sample=1), job("k2")]) == 2
    assert q.put([job("k1", sample=2), job("k3")]) == 1
    rows = {r["key"]: r for r in q.jobs()}
    assert list(rows) == ["k1", "k2", "k3"]
    assert q.counts() == {"pending": 3, "leased": 0, "done": 0, "dead": 0, "stale": 0}
    assert q.lease("w", ["adapt/a"], 10).payload == task(1, edit_id="k1")


def test_a_dict_payload_is_refused_and_names_the_key(q):
    with pytest.raises(TypeError, match="'bad-key'.*StudentJob"):
        q.put([job("ok"), Job("bad-key", "adapt/a", {"condition": "edit"}, teacher_version=1)])
    assert q.jobs() == []  # the batch is rejected as a whole


def test_a_lease_hands_back_the_parsed_record(q):
    sent = StudentJob("knowledge", "heldout", (CTX, CTX), ("One.", "Two."), edit_id="e", sample=3, seed=7,
                      answer=False)
    q.put([Job("k", "adapt/a", sent, teacher_version=1)])
    got = q.lease("w", ["adapt/a"], 10).payload
    assert got == sent and isinstance(got.contexts[0], Context)


@pytest.mark.parametrize("call,needle", [
    (lambda q: q.lease("w", ["k"], 0), "lease_s"),
    (lambda q: q.lease("w", [], 1), "kinds"),
    (lambda q: q.lease("w", "adapt/a", 1), "kinds"),
    (lambda q: q.lease("", ["k"], 1), "worker"),
])
def test_bad_arguments_are_named(q, call, needle):
    with pytest.raises((ValueError, TypeError), match=needle):
        call(q)


def test_max_attempts_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="max_attempts"):
        Queue(tmp_path / "q.sqlite", max_attempts=0)


def test_lease_by_kind_in_insertion_order(q):
    q.put([job("b1", kind="B"), job("a1", kind="A"), job("a2", kind="A")])
    got = [q.lease("w", ["A"], 60) for _ in range(3)]
    assert [g.key if g else None for g in got] == ["a1", "a2", None]
    assert got[0].kind == "A" and got[0].attempt == 1 and got[0].payload.edit_id == "a1"
    assert q.counts(kinds=["B"])["pending"] == 1
    assert q.lease("w", ["A", "B"], 60).key == "b1"


def test_expired_lease_is_redelivered(q, clock):
    q.put([job("k")])
    first = q.lease("w1", ["adapt/a"], 10)
    assert first.expires == clock.now + 10
    clock.now += 5
    assert q.lease("w2", ["adapt/a"], 10) is None  # still held
    clock.now += 6
    second = q.lease("w2", ["adapt/a"], 10)
    assert (second.key, second.attempt, second.worker) == ("k", 2, "w2")
    hist = q.attempts("k")
    assert [(a["attempt"], a["worker"], a["outcome"]) for a in hist] == [(1, "w1", "expired"), (2, "w2", None)]
    assert hist[0]["token"] == first.token and hist[1]["ended_at"] is None
    assert q.renew(first, 10) is False
    assert q.renew(second, 10) is True


def test_renew_extends_before_expiry(q, clock):
    q.put([job("k")])
    lease = q.lease("w1", ["adapt/a"], 10)
    clock.now += 8
    assert q.renew(lease, 10)  # now runs out at +18
    clock.now += 5  # past the old expiry (+10), before the new one
    assert q.lease("w2", ["adapt/a"], 10) is None
    clock.now += 6
    assert q.lease("w2", ["adapt/a"], 10).attempt == 2


def test_renew_after_expiry_if_nobody_took_it(q, clock):
    q.put([job("k")])
    lease = q.lease("w1", ["adapt/a"], 10)
    clock.now += 100
    assert q.renew(lease, 10)
    assert q.lease("w2", ["adapt/a"], 10) is None


def test_double_ack_counts_once(q):
    q.put([job("k")])
    lease = q.lease("w", ["adapt/a"], 60)
    assert q.ack(lease, {"score": 1.0}) is True
    assert q.ack(lease, {"score": 2.0}) is False
    assert q.results() == {"k": {"score": 1.0}}
    assert q.counts()["done"] == 1 and q.lease("w", ["adapt/a"], 60) is None
    assert [a["outcome"] for a in q.attempts("k")] == ["acked"]


def test_both_deliveries_ack_first_result_kept(q, clock):
    q.put([job("k")])
    first = q.lease("w1", ["adapt/a"], 10)
    clock.now += 11
    second = q.lease("w2", ["adapt/a"], 10)
    assert q.ack(first, {"by": "w1"}) is True  # late, but the work is valid and no result exists
    assert q.renew(second, 10) is False  # the job is done: w2 can stop
    assert q.ack(second, {"by": "w2"}) is False
    assert q.results() == {"k": {"by": "w1"}}
    assert q.jobs()[0]["state"] == "done"
    assert [a["outcome"] for a in q.attempts("k")] == ["acked", "superseded"]
    assert q.attempts("k")[1]["reason"] == "result recorded by attempt 1"


def open_attempts(path) -> list[tuple[str, int, str]]:
    """(key, attempt, state) of every attempt row still open on a job in a final state."""
    with sqlite3.connect(path) as db:
        return db.execute("SELECT a.key, a.attempt, j.state FROM attempts a JOIN jobs j ON j.key = a.key"
                          " WHERE a.outcome IS NULL AND j.state IN ('done', 'dead', 'stale')").fetchall()


def test_a_late_ack_closes_the_attempt_of_the_current_holder(tmp_path, clock):
    path = tmp_path / "q.sqlite"
    with Queue(path, clock=clock) as q:
        q.put([job("k")])
        first = q.lease("A", ["adapt/a"], 10)
        clock.now += 11  # A's lease runs out ...
        second = q.lease("B", ["adapt/a"], 10)  # ... and B takes the job
        clock.now += 1
        assert q.ack(first, {"by": "A"}) is True  # A's late ack finishes the job; B then dies silently
        hist = q.attempts("k")
        assert [(a["worker"], a["outcome"]) for a in hist] == [("A", "acked"), ("B", "superseded")]
        assert hist[1]["ended_at"] == clock.now and hist[1]["reason"] == "result recorded by attempt 1"
        assert open_attempts(path) == []
        assert q.ack(second, {"by": "B"}) is False and q.attempts("k")[1]["outcome"] == "superseded"
        assert q.results() == {"k": {"by": "A"}}


def test_nacked_job_dies_after_max_attempts_round_goes_on(tmp_path, clock):
    with Queue(tmp_path / "q.sqlite", max_attempts=3, clock=clock) as q:
        q.put([job("poison"), job("fine")])
        states = []
        for i in range(1, 4):
            lease = q.lease("w", ["adapt/a"], 60)
            assert (lease.key, lease.attempt) == ("poison", i)
            states.append(q.nack(lease, f"boom {i}"))
        assert states == ["pending", "pending", "dead"]
        row = q.jobs(states=["dead"])[0]
        assert (row["key"], row["attempts"], row["last_error"]) == ("poison", 3, "boom 3")
        assert [a["outcome"] for a in q.attempts("poison")] == ["nacked"] * 3
        assert q.nack(lease, "again") == "dead"  # no-op on a finished job
        fine = q.lease("w", ["adapt/a"], 60)
        assert fine.key == "fine" and q.ack(fine, {})
        assert q.counts() == {"pending": 0, "leased": 0, "done": 1, "dead": 1, "stale": 0}


def test_nack_from_old_delivery_is_a_no_op(q, clock):
    q.put([job("k")])
    first = q.lease("w1", ["adapt/a"], 10)
    clock.now += 11
    q.lease("w2", ["adapt/a"], 10)
    assert q.nack(first, "late failure") == "leased"
    assert q.jobs()[0]["attempts"] == 2 and q.jobs()[0]["last_error"] is None


def test_lease_expiring_on_last_attempt_goes_dead(tmp_path, clock):
    with Queue(tmp_path / "q.sqlite", max_attempts=2, clock=clock) as q:
        q.put([job("k"), job("other", kind="adapt/b")])
        q.lease("w1", ["adapt/a"], 10)
        clock.now += 11
        assert q.lease("w2", ["adapt/a"], 10).attempt == 2
        clock.now += 11
        assert q.lease("w3", ["adapt/a", "adapt/b"], 10).key == "other"  # the search went past the dead job
        row = q.jobs(kinds=["adapt/a"])[0]
        assert row["state"] == "dead"
        assert row["last_error"] == "lease expired on attempt 2 (worker w2)"
        assert [a["outcome"] for a in q.attempts("k")] == ["expired", "expired"]


def test_dropped_job_is_stale_and_refuses_ack(q):
    q.put([job("k"), job("j"), job("done")])
    lease = q.lease("w", ["adapt/a"], 60)
    finished = q.lease("w", ["adapt/a"], 60)
    q.ack(q.lease("w", ["adapt/a"], 60), {})
    assert q.drop(["k", "j", "done"], "teacher v3 supersedes v1") == 2  # a done job stays done
    assert q.drop(["k"], "again") == 0
    assert q.renew(lease, 60) is False
    assert q.ack(lease, {"score": 1}) is False
    assert q.counts() == {"pending": 0, "leased": 0, "done": 1, "dead": 0, "stale": 2}
    assert q.unfinished() == 0 and q.lease("w", ["adapt/a"], 60) is None
    assert list(q.results()) == ["done"]
    assert q.jobs(states=["stale"])[0]["last_error"] == "teacher v3 supersedes v1"
    assert q.nack(finished, "x") == "stale"
    # the holders' attempts are closed by the drop, not left open for holders that may be gone
    assert [(a["outcome"], a["reason"]) for a in q.attempts("k")] == [("dropped", "teacher v3 supersedes v1")]
    assert open_attempts(q.path) == []


def test_filters_by_round_and_kind(q):
    q.put([Job("r0", "A", task(), 1, round=0), Job("r1", "A", task(), 2, round=1), Job("b1", "B", task(), 2, round=1)])
    q.ack(q.lease("w", ["A"], 60), {"r": 0})
    assert q.unfinished(round=1) == 2 and q.unfinished(kinds=["A"], round=1) == 1
    assert q.results(round=0) == {"r0": {"r": 0}} and q.results(round=1) == {}
    assert [r["key"] for r in q.jobs(round=1, kinds=["B"])] == ["b1"]
    assert q.jobs(kinds=["B"])[0]["teacher_version"] == 2


def test_reopen_keeps_everything_and_uses_wal(tmp_path, clock):
    path = tmp_path / "q.sqlite"
    with Queue(path, clock=clock) as q:
        q.put([job("a"), job("b"), job("c")])
        q.ack(q.lease("w", ["adapt/a"], 60), {"score": 0.5})
        q.nack(q.lease("w", ["adapt/a"], 60), "oom")
        q.set_flag("stop", "1")
        before = (q.counts(), q.results(), q.jobs(), q.attempts("b"))
    with Queue(path, clock=clock) as q:
        assert (q.counts(), q.results(), q.jobs(), q.attempts("b")) == before
        assert q.get_flag("stop") == "1" and q.get_flag("missing") is None
        q.set_flag("stop", "0")
        assert q.get_flag("stop") == "0"
    assert before[0] == {"pending": 2, "leased": 0, "done": 1, "dead": 0, "stale": 0}
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_schema_version_mismatch_is_refused(tmp_path):
    path = tmp_path / "q.sqlite"
    Queue(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(RuntimeError, match="schema version 99"):
        Queue(path)


def _drain(path, worker, acks):
    """Worker process: lease and ack until nothing is left, then report how many acks counted."""
    with Queue(path) as q:
        n = 0
        while (lease := q.lease(worker, ["tiny"], 60)) is not None:
            n += q.ack(lease, {"worker": worker, "double": lease.payload.sample * 2})
        acks.put((worker, n))


def test_concurrent_workers_each_job_delivered_once(tmp_path):
    path = tmp_path / "q.sqlite"
    with Queue(path) as q:
        assert q.put(Job(f"j{i}", "tiny", task(i), teacher_version=1) for i in range(200)) == 200
    acks = SPAWN.SimpleQueue()
    procs = [SPAWN.Process(target=_drain, args=(str(path), f"w{i}", acks)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    per_worker = dict(acks.get() for _ in procs)
    assert sorted(per_worker) == ["w0", "w1", "w2", "w3"] and sum(per_worker.values()) == 200
    with Queue(path) as q:
        assert q.counts()["done"] == 200
        results = q.results()
        assert len(results) == 200 and all(results[f"j{i}"]["double"] == 2 * i for i in range(200))
        assert all(r["attempts"] == 1 for r in q.jobs())
        assert all(len(q.attempts(f"j{i}")) == 1 for i in range(200))
        by_worker = {}
        for r in results.values():
            by_worker[r["worker"]] = by_worker.get(r["worker"], 0) + 1
        assert {w: n for w, n in per_worker.items() if n} == by_worker


def _lease_and_hang(path, ready):
    q = Queue(path)
    q.lease("doomed", ["k"], 0.5)
    assert q.lease("doomed", ["late"], 60).attempt == 2  # redelivered: the parent's lease ran out
    ready.set()
    time.sleep(60)


def test_killed_worker_lease_expires_and_job_is_redone(tmp_path):
    path = tmp_path / "q.sqlite"
    with Queue(path) as q:
        q.put([Job("only", "k", task(), teacher_version=1), Job("late", "late", task(), teacher_version=1)])
        early = q.lease("early", ["late"], 0.05)
        time.sleep(0.1)
        ready = SPAWN.Event()
        proc = SPAWN.Process(target=_lease_and_hang, args=(str(path), ready))
        proc.start()
        try:
            assert ready.wait(30)
            assert q.jobs()[0]["state"] == "leased"
            assert [a["worker"] for a in q.attempts("only")] == ["doomed"]
            assert q.ack(early, {"early": True})  # a late ack finishes the job the doomed worker holds
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
        assert proc.exitcode == -signal.SIGKILL
        deadline = time.time() + 10
        while (lease := q.lease("rescuer", ["k"], 30)) is None and time.time() < deadline:
            time.sleep(0.05)
        assert lease is not None and lease.attempt == 2
        assert q.ack(lease, {"ok": True})
        assert [(a["worker"], a["outcome"]) for a in q.attempts("only")] == [("doomed", "expired"),
                                                                              ("rescuer", "acked")]
        assert [(a["worker"], a["outcome"]) for a in q.attempts("late")] == [("early", "acked"),
                                                                              ("doomed", "superseded")]
        assert q.results() == {"only": {"ok": True}, "late": {"early": True}}
        assert q.counts()["done"] == 2 and open_attempts(path) == []  # no row reads as running forever


def test_a_group_is_leased_together_and_redelivered_whole(q, clock):
    q.put([Job(f"g{i}", "adapt/a", task(), 0, group="G") for i in range(3)] + [Job("solo", "adapt/a", task(), 0)])
    got = q.lease_group("w1", ["adapt/a"], 10.0)
    assert [x.key for x in got] == ["g0", "g1", "g2"]
    assert [x.key for x in q.lease_group("w2", ["adapt/a"], 10.0)] == ["solo"]  # a job with no group
    assert q.lease_group("w2", ["adapt/a"], 10.0) == []
    clock.now += 11  # w1 died holding the group: every member comes back, to one worker
    again = q.lease_group("w3", ["adapt/a"], 10.0)
    assert [x.key for x in again] == ["g0", "g1", "g2"] and {x.attempt for x in again} == {2}
    assert q.ack_many([(x, {"k": x.key}) for x in again]) == 3
    assert q.ack_many([(x, {"late": 1}) for x in got]) == 0  # w1's late acks change nothing
    assert q.results() == {f"g{i}": {"k": f"g{i}"} for i in range(3)}


def test_ack_many_is_one_transaction(q):
    q.put([Job(f"g{i}", "adapt/a", task(), 0, group="G") for i in range(2)])
    leases = q.lease_group("w", ["adapt/a"], 10.0)
    with pytest.raises(TypeError):  # the second result is not JSON: neither is recorded
        q.ack_many([(leases[0], {"ok": 1}), (leases[1], {"bad": object()})])
    assert q.results() == {} and q.counts()["leased"] == 2


@pytest.mark.parametrize("version", [1, 2, 3])
def test_a_queue_file_of_untyped_payloads_is_refused_with_what_to_do(tmp_path, version):
    """Queue files of earlier versions (schema 1: no job groups; 2: dict payloads; 3: string
    conditions and a result's ``completion``) are not read: the message says how to finish or
    restart the run."""
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE jobs (key TEXT PRIMARY KEY, kind TEXT NOT NULL, round INTEGER NOT NULL,
            teacher_version INTEGER NOT NULL, payload TEXT NOT NULL, state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0, lease_worker TEXT, lease_token TEXT, lease_expires REAL,
            last_error TEXT, created REAL NOT NULL, updated REAL NOT NULL);
        INSERT INTO jobs VALUES ('old', 'adapt/a', 0, 0, '{"condition": "base"}', 'pending', 0, NULL, NULL, NULL,
            NULL, 1, 1);""")
    db.execute(f"PRAGMA user_version = {version}")
    db.close()
    with pytest.raises(RuntimeError, match=f"schema version {version}.*commit that started it.*new run_dir"):
        Queue(path)
