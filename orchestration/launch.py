"""Local launchers: who runs the student workers while the driver waits on the queue.

``process`` (default): `seal worker` subprocesses, ``per_student`` for each student, started once
and kept across rounds (each loads its model once); a student that leaves the set (roles=same:
the previous teacher version) has its idle workers stopped. A worker that dies is restarted, up to
``restarts`` times per place; its leased job runs out and is delivered again, so nothing is lost.
Workers poll the queue's stop flag and also exit when the driver that started them is gone.

``inline``: one worker per student inside the driver process, each serving until its jobs are
drained. The smallest setups: no second copy of torch, no process start-up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from core.console import Progress
from core.delivery import STOP_FLAG
from core.queue import Queue
from student.worker import Worker


class WorkerError(RuntimeError):
    """A worker process kept dying; the run folder is resumable once the cause is fixed."""
QUEUE_FILE = "queue.sqlite"


def open_jobs(q: Queue, keys: set[str]) -> int:
    """How many of ``keys`` are still pending or leased."""
    return sum(row["key"] in keys for row in q.jobs(states=["pending", "leased"]))


def watch(q: Queue, keys: set[str], desc: str, poll_s: float, check, stop: threading.Event | None = None) -> None:
    """A progress bar over ``keys`` until none is pending or leased (or ``stop`` is set); ``check()``
    runs before each poll and raises when the workers cannot go on."""
    stop = stop or threading.Event()
    with Progress(len(keys), desc, "job") as bar:
        while not stop.is_set():
            check()
            left = open_jobs(q, keys)
            bar.set(len(keys) - left)
            if left == 0:
                return
            stop.wait(poll_s)


def _watch_inline(path: Path, keys: set[str], desc: str, poll_s: float, stop: threading.Event) -> None:
    with Queue(path) as q:  # a connection of this thread's own (sqlite's are per thread)
        watch(q, keys, desc, poll_s, lambda: None, stop)


class InlineWorkers:
    def __init__(self, cfg, run: Path):
        self.cfg, self.run = cfg, run
        self.workers: dict[str, Worker] = {}

    def wait(self, keys: set[str], desc: str, students) -> None:
        wanted = {s.model for s in students}
        for model in [m for m in self.workers if m not in wanted]:
            del self.workers[model]  # a teacher version that is no longer the student (roles=same)
        # the bar polls the queue from a thread of its own: the workers below serve in this one
        stop = threading.Event()
        bar = threading.Thread(target=_watch_inline, args=(self.run / QUEUE_FILE, keys, desc,
                                                           max(1.0, self.cfg.workers.poll_s), stop), daemon=True)
        bar.start()
        try:
            for s in students:
                if s.model not in self.workers:  # loaded once, kept across rounds
                    self.workers[s.model] = Worker(s, cache=self.cfg.models_cache,
                                                   judge_cache=self.run / "judge_cache.json")
                self.workers[s.model].serve(self.run / QUEUE_FILE, lease_s=self.cfg.workers.lease_s,
                                            until="drained", poll_s=self.cfg.workers.poll_s,
                                            max_attempts=self.cfg.workers.max_attempts)
        finally:
            stop.set()
            bar.join()

    def stop(self) -> None:
        self.workers.clear()


class ProcessWorkers:
    def __init__(self, cfg, run: Path):
        self.cfg, self.run = cfg, run
        self.places: list[tuple[str, int]] = []
        self.procs: dict[tuple[str, int], subprocess.Popen] = {}
        self.restarts: dict[tuple[str, int], int] = {}
        (run / "logs").mkdir(exist_ok=True)

    def _use(self, students) -> None:
        """Serve ``students`` from now on: stop the workers of any other student (they are idle)."""
        self.places = [(s.model, i) for s in students for i in range(self.cfg.workers.per_student)]
        self.threads = self.cfg.workers.threads or max(1, (os.cpu_count() or 1) // len(self.places))
        for place in [x for x in self.procs if x not in self.places]:
            self.procs.pop(place).terminate()
        for place in self.places:
            self.restarts.setdefault(place, 0)

    def _spawn(self, place: tuple[str, int]) -> subprocess.Popen:
        student, i = place
        log = open(self.run / "logs" / f"worker-{student.strip('/').replace('/', '_')}-{i}.log", "a")
        cmd = [sys.executable, "-m", "orchestration.cli", "worker", f"run_dir={self.run}",
               f"student={student}", "until=stopped", f"threads={self.threads}", f"parent_pid={os.getpid()}"]
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def _check(self) -> None:
        for place in self.places:
            proc = self.procs.get(place)
            if proc is not None and proc.poll() is None:
                continue
            if proc is not None:  # it died: restart it (its leased job will be delivered again)
                self.restarts[place] += 1
                if self.restarts[place] > self.cfg.workers.restarts:
                    raise WorkerError(f"worker {place[1]} of student {place[0]} exited (code {proc.returncode}) "
                                       f"{self.restarts[place]} times; see {self.run / 'logs'}. Fix the cause and "
                                       f"rerun the same command to resume")
                tqdm.write(f"worker {place[1]} of {place[0]} exited (code {proc.returncode}); restarting it")
            self.procs[place] = self._spawn(place)

    def wait(self, keys: set[str], desc: str, students) -> None:
        self._use(students)
        with Queue(self.run / QUEUE_FILE, max_attempts=self.cfg.workers.max_attempts) as q:
            q.set_flag(STOP_FLAG, "0")
            watch(q, keys, desc, self.cfg.workers.poll_s, self._check)

    def stop(self) -> None:
        if not self.procs:
            return
        with Queue(self.run / QUEUE_FILE) as q:
            q.set_flag(STOP_FLAG, "1")
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:  # mid-job: its lease runs out and the job is redone
                proc.terminate()
        self.procs.clear()
