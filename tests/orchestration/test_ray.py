"""The Ray launcher on a local 2-CPU Ray cluster: a round gives what the local launcher gives, a
worker actor killed while it holds a lease loses nothing and counts nothing twice, the staleness
bound (in both launchers), teacher generation in an actor, and model folders that reach the actors
without the driver's file system."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import pytest
import ray

from core.config import ConfigError, load_config
from core.contexts import load_contexts
from core.delivery import LAG_FLAG, VERSION_FLAG
from core.jobs import StudentJob, job_kind
from core.queue import Job, Queue
from orchestration import dispatch, launch
from orchestration.ray_cluster import RayConfig, init_ray
from orchestration.ray_launch import RayWorkers, student_actor
from orchestration.ray_models import model_files, ship, terminate
from orchestration.train import TrainConfig, run_train
from orchestration.train_config import WorkersConfig
from student.config import AnswerSettings, LoraSettings, StudentConfig, TrainSettings
from tests.orchestration.test_train import check_complete, poisoned, wait_for, write_config

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    init_ray(RayConfig(num_cpus=2))
    yield
    ray.shutdown()


# one adaptation per actor call (workers.group_size=1), unless a test says otherwise
RAY_WORKERS = {"mode": "inline", "lease_s": 2.0, "poll_s": 0.05, "threads": 1, "group_size": 1}


def tiny_student(model: str, epochs: int = 1) -> StudentConfig:
    return StudentConfig(model=model, threads=1, answer=AnswerSettings(max_new_tokens=4),
                         lora=LoraSettings(r=4, alpha=8), train=TrainSettings(epochs=epochs, batch_size=4, dtype="fp32"))


def train_config(launcher: str, student: StudentConfig, **ray_cfg) -> TrainConfig:
    return TrainConfig(launcher=launcher, students=[student], ray=RayConfig(**ray_cfg),
                       workers=WorkersConfig(mode="inline", lease_s=2.0, poll_s=0.05, threads=1, group_size=1))


def edit_jobs(student: str, versions: list[int]) -> list[Job]:
    """One edit job per (context, version) and a base job per context (teacher version 0)."""
    jobs = []
    for c in load_contexts("demo", limit=2):
        jobs.append(Job(f"base/{c.context_id}@{student}", job_kind(student),
                        StudentJob("knowledge", "base", (c,), ("",)), 0))
        for v in versions:
            jobs.append(Job(f"v{v}/{c.context_id}@{student}", job_kind(student),
                            StudentJob("knowledge", "edit", (c,), (c.context,), edit_id=f"v{v}/{c.context_id}"),
                            teacher_version=v))
    return jobs


def listening(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) listening on ``port``."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.split(":")[1], 16) == port:
                out.append(local.split(":")[0])
    return out


def test_a_local_cluster_listens_on_loopback_only(cluster):
    node = ray.nodes()[0]
    assert node["NodeManagerAddress"] == "127.0.0.1"
    gcs = ray.get_runtime_context().gcs_address
    assert gcs.startswith("127.0.0.1:")
    loopback = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}
    for port in (int(gcs.rsplit(":", 1)[1]), node["NodeManagerPort"], node["ObjectManagerPort"]):
        addrs = listening(port)
        assert addrs and set(addrs) <= loopback, (port, addrs)


@pytest.mark.parametrize("group_size", [1, 4])
def test_a_round_on_ray_matches_the_local_launcher_at_the_same_group_size(tmp_path, cluster, tiny_chat_model,
                                                                         tiny_model, group_size):
    """Same seeds and threads: same edits (the teacher generating in an actor, v1 reaching it
    through the object store), same result keys, counts and scores. With group_size > 1 a Ray
    actor trains the same fixed groups of K adaptations in one pass as a local worker."""
    runs = {}
    for launcher in ("local", "ray"):
        cfg_path = write_config(tmp_path / f"{launcher}.yaml", tiny_chat_model, tiny_model, "inline", launcher=launcher,
                                workers={**RAY_WORKERS, "group_size": group_size})
        run = tmp_path / launcher
        cfg, resolved = load_config(TrainConfig, cfg_path, [f"run_dir={run}"])
        rows = run_train(cfg, resolved)
        check_complete(run, tiny_model)
        results = {r["key"]: r for r in map(json.loads, (run / "results.jsonl").read_text().splitlines())}
        edits = [(e["edit_id"], e["text"]) for e in map(json.loads, (run / "edits.jsonl").read_text().splitlines())]
        runs[launcher] = rows, results, edits
    (local_rows, local, local_edits), (ray_rows, on_ray, ray_edits) = runs["local"], runs["ray"]
    assert ray_edits == local_edits
    assert sorted(on_ray) == sorted(local)
    for key in local:
        for field in ("student", "score", "baseline_score", "verdicts", "seed"):
            assert on_ray[key][field] == local[key][field], (key, field)
        for field in ("group", "steps", "first_loss", "final_loss", "learning_rate"):  # train_s is a wall time
            assert on_ray[key]["train"].get(field) == local[key]["train"].get(field), (key, field)
    trained = [r["train"] for r in local.values() if r["train"]]
    assert max(t["group"] for t in trained) == min(group_size, 4)  # K adaptations did train in one pass
    for a, b in zip(local_rows, ray_rows):
        for field in ("teacher_version", "students", "heldout", "reference", "rewards", "jobs", "new_version"):
            assert getattr(a, field) == getattr(b, field), field


def test_same_roles_on_ray_the_student_actor_follows_the_teacher_version(tmp_path, cluster, tiny_chat_model,
                                                                        tiny_model):
    """roles=same: round 1's student is checkpoints/v1, a folder only the driver has; it reaches a
    new student actor (the v0 one is stopped) through the object store."""
    cfg_path = write_config(tmp_path / "c.yaml", tiny_chat_model, tiny_model, "inline", roles="same", launcher="ray",
                            workers=RAY_WORKERS)
    run = tmp_path / "run"
    cfg, resolved = load_config(TrainConfig, cfg_path, [f"run_dir={run}"])
    rows = run_train(cfg, resolved)
    v1 = str(run / "checkpoints" / "v1")
    assert [r.students for r in rows] == [{"same-model": tiny_chat_model}, {"same-model": v1}]
    results = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    assert len({r["key"] for r in results}) == len(results) and rows[1].jobs["dead"] == 0
    assert sorted(r["key"] for r in results if r["student"] == v1) == sorted(
        f"v1/heldout/{h.context_id}/0@{v1}" for h in load_contexts("demo", offset=20, limit=2))


def test_killing_a_worker_actor_holding_a_lease_loses_nothing(tmp_path, cluster, tiny_model):
    cfg = train_config("ray", tiny_student(tiny_model, epochs=40))
    jobs = edit_jobs(tiny_model, [0])
    with Queue(tmp_path / launch.QUEUE_FILE) as q:
        q.put(jobs)
    workers = RayWorkers(cfg, tmp_path)
    killed = {}

    def kill_the_first_edit_job():
        def leased():
            with Queue(tmp_path / launch.QUEUE_FILE) as q:
                rows = [j for j in q.jobs(states=["leased"]) if j["key"].startswith("v0/")]
                return rows and (rows[0]["key"], q.attempts(rows[0]["key"])[-1]["worker"])
        killed["key"], killed["worker"] = wait_for(leased, 120, "an edit job to be leased")
        os.kill(int(killed["worker"].split(":")[1]), signal.SIGKILL)  # the actor process, mid-job

    killer = threading.Thread(target=kill_the_first_edit_job)
    killer.start()
    try:
        workers.wait({j.key for j in jobs}, "jobs", cfg.students)
        assert [s.deaths for s in workers.actors] == [1]  # not one per call refused while Ray restarts it
    finally:
        killer.join()
        workers.stop()
    with Queue(tmp_path / launch.QUEUE_FILE) as q:
        assert set(q.results()) == {j.key for j in jobs} and q.counts()["done"] == len(jobs)
        attempts = q.attempts(killed["key"])
        assert [j for j in q.jobs() if j["attempts"] != 1] == [next(j for j in q.jobs() if j["key"] == killed["key"])]
    assert [a["outcome"] for a in attempts] == ["nacked", "acked"]
    assert attempts[0]["worker"] == killed["worker"] and attempts[0]["reason"].startswith("worker died")
    assert attempts[1]["worker"] != killed["worker"]  # the restarted actor: same slot, new process


def test_an_actor_dying_beyond_max_restarts_stops_the_run_resumably(tmp_path, cluster, tiny_model):
    cfg = train_config("ray", tiny_student(tiny_model, epochs=40), max_restarts=0)
    jobs = edit_jobs(tiny_model, [0])[:2]
    with Queue(tmp_path / launch.QUEUE_FILE) as q:
        q.put(jobs)
    workers = RayWorkers(cfg, tmp_path)

    def kill_when_leased():
        def worker():
            with Queue(tmp_path / launch.QUEUE_FILE) as q:
                return [q.attempts(j["key"])[-1]["worker"] for j in q.jobs(states=["leased"])]
        os.kill(int(wait_for(worker, 120, "a job to be leased")[0].split(":")[1]), signal.SIGKILL)

    killer = threading.Thread(target=kill_when_leased)
    killer.start()
    try:
        with pytest.raises(launch.WorkerError, match="rerun the same command to resume"):
            workers.wait({j.key for j in jobs}, "jobs", cfg.students)
    finally:
        killer.join()
        workers.stop()
    with Queue(tmp_path / launch.QUEUE_FILE) as q:  # nothing lost: the job is pending again
        assert q.counts()["leased"] == 0 and q.counts()["pending"] + q.counts()["done"] == len(jobs)


def test_a_local_cluster_too_small_for_the_actors_is_refused(tmp_path, cluster, tiny_model):
    cfg = train_config("ray", tiny_student(tiny_model))
    cfg.students.append(tiny_student(tiny_model + "-2"))  # 2 student actors + the teacher's: 3 CPUs of 2
    with pytest.raises(ConfigError, match="ray.worker_cpus"):
        RayWorkers(cfg, tmp_path)


@pytest.mark.parametrize("launcher", ["local", "ray"])
def test_the_staleness_bound_and_a_failing_job_in_both_launchers(tmp_path, cluster, tiny_model, launcher):
    cfg = train_config(launcher, tiny_student(tiny_model))
    bad = Job(f"bad@{tiny_model}", job_kind(tiny_model), poisoned(load_contexts("demo", limit=1)[0]), teacher_version=1)
    jobs = edit_jobs(tiny_model, [0, 1]) + [bad]
    with Queue(tmp_path / launch.QUEUE_FILE) as q:
        q.put(jobs)
        q.set_flag(VERSION_FLAG, "2")
        q.set_flag(LAG_FLAG, "1")  # v0 edits are 2 versions old: stale; v1 edits and base jobs are scored
    workers = dispatch.make_workers(cfg, tmp_path, ray=launcher == "ray")
    assert isinstance(workers, RayWorkers) == (launcher == "ray")
    try:
        workers.wait({j.key for j in jobs}, "jobs", cfg.students)
    finally:
        workers.stop()
    with Queue(tmp_path / launch.QUEUE_FILE) as q:
        stale = {j["key"]: j["last_error"] for j in q.jobs(states=["stale"])}
        assert sorted(stale) == sorted(j.key for j in jobs if j.key.startswith("v0/"))
        assert all("beyond max_teacher_lag=1" in why for why in stale.values())
        assert sorted(q.results()) == sorted(j.key for j in jobs if not j.key.startswith(("v0/", "bad")))
        # the job raised in the worker: nacked with its error each time, then dead-lettered
        assert [j["last_error"].split(":")[0] for j in q.jobs(states=["dead"])] == ["ZeroDivisionError"]
        assert [a["outcome"] for a in q.attempts(bad.key)] == ["nacked"] * 3


def test_teacher_generation_in_an_actor_matches_the_local_backend(cluster, tiny_chat_model):
    from teacher.prompts import render

    cfg = TrainConfig(launcher="ray")
    cfg.teacher.model, cfg.teacher.threads = tiny_chat_model, 1
    cfg.teacher.generation.max_new_tokens, cfg.teacher.generation.dtype = 12, "fp32"
    outs = {}
    for launcher in ("local", "ray"):
        cfg.launcher = launcher
        backend = dispatch.teacher_backend(cfg, tiny_chat_model, ray=launcher == "ray")
        try:
            prompts = [render(cfg.teacher.prompt, cfg.teacher.templates, c.title, c.context, backend.tokenizer,
                              backend.chat) for c in load_contexts("demo", limit=2)]
            outs[launcher] = backend.generate(prompts, 2, seed=7), backend.generate(prompts, 1, greedy=True, seed=7)
            assert backend.chat
        finally:
            backend.close()
    assert outs["ray"] == outs["local"] and type(outs["ray"][0][0][0]) is type(outs["local"][0][0][0])


@pytest.mark.parametrize("shared", [False, True], ids=["object-store", "shared-path"])
def test_a_local_model_folder_reaches_the_actor_without_the_drivers_copy(tmp_path, cluster, tiny_model, shared):
    src = tmp_path / "student"
    shutil.copytree(tiny_model, src)
    rc = RayConfig(shared_path=str(tmp_path / "shared") if shared else None)
    spec = ship(str(src), rc)
    shutil.rmtree(src)  # the driver's folder is gone: the actor can only load what was shipped
    leftover = Path(tempfile.gettempdir()) / "seal-model-999999999-x"  # of a killed actor (no such pid)
    leftover.mkdir(exist_ok=True)
    actor = student_actor(rc, tiny_student(str(src)), spec, None, threads=1)
    try:
        where = ray.get(actor.ready.remote())["model_path"]
        job = edit_jobs(str(src), [0])[1]
        (result,) = ray.get(actor.run_group.remote([(job.key, job.payload)]))
        assert Path(where).is_dir() and where != str(src)
    finally:
        terminate(actor)
    assert where.startswith(str(tmp_path / "shared")) == shared
    assert result.key == job.key and result.student == str(src) and result.condition == "edit"
    if not shared:  # the actor's own unpacked copy goes with it, and it swept the one left by a killed actor
        wait_for(lambda: not Path(where).exists(), 30, "the unpacked copy to be removed")
        assert not leftover.exists()
    shutil.rmtree(leftover, ignore_errors=True)


def test_an_adapter_version_ships_with_its_chain_of_parents(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    ckpt = tmp_path / "run" / "checkpoints"
    for v, parent in ((1, str(base)), (2, "../v1")):
        (ckpt / f"v{v}").mkdir(parents=True)
        (ckpt / f"v{v}" / "adapter_model.safetensors").write_bytes(b"w")
        (ckpt / f"v{v}" / "manifest.json").write_text(json.dumps({"version": v, "save": "adapter", "parent": parent}))
    files = model_files(str(ckpt / "v2"))
    assert sorted(files) == ["m0/adapter_model.safetensors", "m0/manifest.json", "m1/adapter_model.safetensors",
                             "m1/manifest.json", "m2/config.json"]
    assert [json.loads(files[f"m{i}/manifest.json"])["parent"] for i in (0, 1)] == ["../m1", "../m2"]
    assert model_files("gemma3-270m") == {} and model_files("org/some-hub-id") == {}
    assert ship("gemma3-270m", RayConfig()) == {"model": "gemma3-270m"}
