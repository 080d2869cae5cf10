"""Ray launcher (launcher: ray): student workers and teacher generation as Ray actors.

The durable ledger stays with the driver; actors never open the queue file. A dispatcher thread in
the driver drives the lease loop every launcher shares (`core.delivery`) on behalf of
each idle student actor (worker id ``host:pid:student``, as local workers): it leases the next
group of jobs (``workers.group_size``, fixed by the driver, so the same jobs run together as with
local workers), drops the stale ones, calls the actor's ``run_group`` (K adaptations in one pass),
renews the leases every ``lease_s / 3`` while the call runs, and acks the group's results in one
transaction. Hence:
- a job that raises in the actor is nacked with "Type: message" (retried, then dead-lettered), as
  with local workers;
- an actor that dies (killed, out of memory, node lost) fails its call with a Ray system error. The
  driver nacks that delivery at once as "worker died: ..." instead of waiting for the leases to run
  out: only the driver acks, and a failed call can never return a result, so no job can count
  twice. Ray restarts the actor (up to ``max_restarts``); the driver leases it work again once it
  has reloaded its model. One death more and the run stops with `WorkerError` (resumable);
- if the driver dies, the leases run out and the resumed run delivers the jobs again.
The dispatcher runs from the first `wait` to `stop`, not only inside `wait`: leases stay renewed
while the driver generates edits or trains the teacher, and rounds may overlap (async_rounds).

Model files (`ray_models`): built-in names and hub ids are resolved by each node; a folder only
the driver has travels through Ray's object store or ``shared_path``. Actors never read the
driver's run folder; an LLM judge caches verdicts in a temp file of the actor (or
``judge.cache_path``). Torch threads per student actor: ``workers.threads``, else its CPU share.

The cluster itself (`RayConfig`, joining or starting it, its resources): `ray_cluster`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from tqdm import tqdm

from core.delivery import Delivery, failure
from core.jobs import StudentJob, job_kind
from core.queue import Queue
from core.records import StudentResult
from orchestration.ray_cluster import RayConfig, check_resources, init_ray
from orchestration.ray_models import local_model, ship, terminate

SLOW_START_S = 120.0  # seconds an actor may take to start before the console says what it waits for
STOP_GRACE_S = 30.0  # seconds `stop` lets running jobs finish before their leases are left to run out


def note_slow_start(what: str, since: float, cpus: float, gpus: float) -> None:
    import ray

    tqdm.write(f"{what} still starting after {time.monotonic() - since:.0f} s: loading its model, or waiting for "
               f"{cpus:g} CPU / {gpus:g} GPU (free in the cluster now: {ray.available_resources()})")


# ----- actors -----------------------------------------------------------------------------------
class StudentActor:
    """One student model in a Ray actor: `student.worker.Worker` without its queue loop."""

    def __init__(self, cfg, spec: dict, cache: Optional[str], threads: int):
        import atexit

        from student.worker import Worker

        self.name = cfg.model  # the driver's name for the student: worker ids and results carry it
        self.path = local_model(spec)
        judge = Path(tempfile.gettempdir()) / f"seal-judge-{os.getpid()}.json"
        atexit.register(judge.unlink, missing_ok=True)
        self.worker = Worker(dataclasses.replace(cfg, model=self.path, threads=threads), cache=cache,
                             worker_id=f"{socket.gethostname()}:{os.getpid()}:{cfg.model}", judge_cache=judge)

    def ready(self) -> dict:
        return {"worker": self.worker.worker_id, "model_path": self.path}

    def run_group(self, jobs: list[tuple[str, StudentJob]]) -> list[StudentResult | str]:
        """Each job's `StudentResult`, or the reason it failed (`delivery.failure`), in order."""
        # the student's name is the driver's, not the unpacked folder this actor happened to load
        return [failure(r) if isinstance(r, Exception) else dataclasses.replace(r, student=self.name)
                for r in self.worker.run_group(jobs)]


class TeacherActor:
    """The teacher's generation backend in a Ray actor; generations come back as plain dicts."""

    def __init__(self, cfg, spec: dict, cache: Optional[str]):
        from teacher.transformers_backend import make_backend

        self.backend = make_backend(local_model(spec), cfg, cache=cache)

    def ready(self) -> bool:
        return True

    def generate(self, prompts: list[str], n: int, greedy: bool, seed: int,
                 choices: Optional[list[str]] = None) -> list[list[dict]]:
        out = self.backend.generate(prompts, n, greedy=greedy, seed=seed, choices=choices)
        return [[dataclasses.asdict(g) for g in row] for row in out]


def student_actor(rc: RayConfig, student, spec: dict, cache: Optional[str], threads: int):
    """Start a `StudentActor` with the resources and restart policy of ``rc``."""
    import ray

    # max_task_retries=0: a job lost with its actor goes back through the queue, never behind its back.
    cls = ray.remote(num_cpus=rc.worker_cpus, num_gpus=rc.worker_gpus, max_restarts=rc.max_restarts,
                     max_task_retries=0)(StudentActor)
    return cls.remote(student, spec, cache, threads)


class RayTeacherBackend:
    """`teacher.backend.Backend`, generating in a Ray actor. The tokenizer
    (to render prompts) is loaded here: the driver has the teacher's files anyway, it trains them."""

    def __init__(self, cfg, model: str):
        import ray
        from transformers import AutoTokenizer

        from core.catalog import cache_dir, resolve
        from core.models import uses_chat

        init_ray(cfg.ray)
        from teacher.versions import root_model

        root = root_model(model)  # an adapter version uses its root's tokenizer
        path = root if Path(root).expanduser().is_dir() else resolve(root, cache_dir(cfg.models_cache))
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.teacher.trust_remote_code)
        self.chat = uses_chat(self.tokenizer, cfg.teacher.chat, "teacher.chat")
        rc = cfg.ray
        # Generation is seeded, so a call lost with its actor is simply retried on the restarted one.
        cls = ray.remote(num_cpus=rc.teacher_cpus, num_gpus=rc.teacher_gpus, max_restarts=rc.max_restarts,
                         max_task_retries=rc.max_restarts)(TeacherActor)
        self.actor = cls.remote(cfg.teacher, ship(model, rc), cfg.models_cache)
        ready, since = self.actor.ready.remote(), time.monotonic()
        while not ray.wait([ready], timeout=SLOW_START_S)[0]:
            note_slow_start("the teacher's Ray actor", since, rc.teacher_cpus, rc.teacher_gpus)
        ray.get(ready)  # raises what stopped it from loading

    def generate(self, prompts: list[str], n: int, *, greedy: bool = False, seed: int = 0,
                 choices: Optional[list[str]] = None):
        import ray

        from teacher.backend import Generation

        rows = ray.get(self.actor.generate.remote(prompts, n, greedy, seed, choices))
        return [[Generation(**g) for g in row] for row in rows]

    def close(self) -> None:
        """Stop the actor, freeing its resources for the next version's."""
        if self.actor is not None:
            terminate(self.actor)
            self.actor = None


# ----- student workers ----------------------------------------------------------------------------
@dataclass
class ActorState:
    """One student actor as the dispatcher sees it."""

    student: Any  # StudentConfig, with the driver's model name
    index: int  # among this student's actors
    actor: Any
    starting: Any = None  # ref of actor.ready() while the actor (re)loads; no job is leased to it then
    worker: str = ""  # its worker id once ready (host:pid:student; a restart changes the pid)
    task: Any = None  # ref of the running run_group call
    delivery: Optional[Delivery] = None  # the group of jobs it runs
    since: float = 0.0  # time.monotonic() when it began (re)starting
    noted: bool = False  # has the console been told that this start is slow?
    deaths: int = 0


class RayWorkers:
    """``workers.per_student`` student actors per student, fed from the run's queue by the driver."""

    def __init__(self, cfg, run: Path):
        init_ray(cfg.ray)
        check_resources(cfg)
        self.cfg, self.run = cfg, run
        self.students: list = []  # set by `wait`, read by the dispatcher (a plain rebinding: atomic)
        self.actors: list[ActorState] = []
        self.specs: dict[str, dict] = {}  # student model -> `ship` spec (a shipped folder is put once)
        self.error: Optional[BaseException] = None
        self.halt = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def wait(self, keys: set[str], desc: str, students) -> None:
        from orchestration.launch import QUEUE_FILE, watch

        self.students = list(students)
        if self.thread is None or not self.thread.is_alive():
            self.halt.clear()
            self.error = None
            self.thread = threading.Thread(target=self._dispatch, name="ray-dispatch", daemon=True)
            self.thread.start()
        with Queue(self.run / QUEUE_FILE, max_attempts=self.cfg.workers.max_attempts) as q:
            watch(q, keys, desc, self.cfg.workers.poll_s, self._raise_error)

    def _raise_error(self) -> None:
        """The dispatcher's failure, raised in the driver's thread."""
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        import ray

        self.halt.set()
        if self.thread is not None:
            self.thread.join(STOP_GRACE_S + 10)
        for state in self.actors:
            if state.task is None:
                terminate(state.actor)
            else:  # still running a job after the grace period: stopped at once, its lease runs out
                ray.kill(state.actor, no_restart=True)
        self.actors.clear()

    # The dispatcher: one loop, in its own thread (SQLite connections are per thread).
    def _dispatch(self) -> None:
        import ray

        from orchestration.launch import QUEUE_FILE

        w = self.cfg.workers
        try:
            with Queue(self.run / QUEUE_FILE, max_attempts=w.max_attempts) as q:
                deadline = None
                while True:
                    if self.halt.is_set():  # stop: lease nothing more, let running jobs finish a while
                        deadline = deadline or time.monotonic() + STOP_GRACE_S
                        if all(s.task is None for s in self.actors) or time.monotonic() > deadline:
                            return
                    else:
                        self._use(self.students)
                        self._lease(q)
                    refs = [r for s in self.actors for r in (s.starting, s.task) if r is not None]
                    if not refs:
                        time.sleep(w.poll_s)
                        continue
                    ray.wait(refs, num_returns=1, timeout=w.poll_s)
                    done = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
                    for state in list(self.actors):
                        if state.starting in done:
                            self._started(state)
                        if state.task in done:
                            self._finished(q, state)
                    self._tend(q)
        except BaseException as e:  # raised to the driver by `wait`; leases still held run out
            self.error = e

    def _use(self, students) -> None:
        """Start the actors of ``students``; stop idle actors of anyone else (roles=same: the
        teacher's previous version), letting a busy one finish its job first."""
        wanted = {s.model: s for s in students}
        for state in [s for s in self.actors if s.student.model not in wanted and s.task is None]:
            terminate(state.actor)
            self.actors.remove(state)
        for model in [m for m in self.specs if m not in wanted]:
            del self.specs[model]  # frees its copy in the object store once its actors are gone
        have = {(s.student.model, s.index) for s in self.actors}
        for model, student in wanted.items():
            for i in range(self.cfg.workers.per_student):
                if (model, i) not in have:
                    if model not in self.specs:
                        self.specs[model] = ship(model, self.cfg.ray)
                    threads = self.cfg.workers.threads or max(1, int(self.cfg.ray.worker_cpus))
                    actor = student_actor(self.cfg.ray, student, self.specs[model], self.cfg.models_cache, threads)
                    self.actors.append(ActorState(student, i, actor, starting=actor.ready.remote(), since=time.monotonic()))

    def _lease(self, q: Queue) -> None:
        wanted = {s.model for s in self.students}
        for state in self.actors:
            if state.starting is not None or state.task is not None or state.student.model not in wanted:
                continue
            while (d := Delivery.take(q, state.worker, job_kind(state.student.model), self.cfg.workers.lease_s)):
                if d.leases:  # else all it leased was stale: take again
                    state.delivery, state.task = d, state.actor.run_group.remote(d.jobs)
                    break

    def _started(self, state: ActorState) -> None:
        import ray
        from ray.exceptions import ActorUnavailableError, RayError

        try:
            state.worker = ray.get(state.starting)["worker"]
            state.starting = None
        except ActorUnavailableError:  # Ray is restarting it: ask again (no new death)
            state.starting = state.actor.ready.remote()
        except RayError as e:  # it died while loading, or for good: try again, within the limit
            self._died(state, e)

    def _finished(self, q: Queue, state: ActorState) -> None:
        import ray
        from ray.exceptions import RayError, RayTaskError

        delivery, task = state.delivery, state.task
        state.task = state.delivery = None
        try:
            delivery.finish(q, ray.get(task))
        except RayTaskError as e:  # the call raised, not the actor: record why, as a local worker does
            delivery.fail(q, failure(e.cause if e.cause is not None else e))
        except RayError as e:  # the actor is gone and the call with it: deliver the jobs again now
            delivery.fail(q, f"worker died: {type(e).__name__} (worker {state.worker})")
            self._died(state, e)

    def _died(self, state: ActorState, e: BaseException) -> None:
        from orchestration.launch import WorkerError

        state.deaths += 1
        if state.deaths > self.cfg.ray.max_restarts:
            raise WorkerError(f"Ray actor {state.index} of student {state.student.model} died {state.deaths} times "
                              f"(ray.max_restarts={self.cfg.ray.max_restarts}); last error: {str(e)[:2000]}\n"
                              f"Fix the cause and rerun the same command to resume") from e
        tqdm.write(f"Ray actor {state.index} of {state.student.model} died ({type(e).__name__}); "
                   f"waiting for Ray to restart it")
        state.starting, state.since, state.noted = state.actor.ready.remote(), time.monotonic(), False  # once reloaded

    def _tend(self, q: Queue) -> None:
        """Renew the leases of running jobs; say once when an actor is slow to start."""
        for state in self.actors:
            if state.starting is not None and not state.noted and time.monotonic() - state.since > SLOW_START_S:
                note_slow_start(f"Ray actor {state.index} of {state.student.model}", state.since,
                                self.cfg.ray.worker_cpus, self.cfg.ray.worker_gpus)
                state.noted = True
            if state.delivery is not None:
                state.delivery.renew_due(q)
