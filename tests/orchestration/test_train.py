"""`seal train` end to end on tiny in-process models: a whole run, resume, and the fault tests
(SIGKILL a worker holding a lease, SIGKILL the driver mid-round, a job that keeps failing)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from core.config import ConfigError, load_config
from core.contexts import load_contexts
from core.jobs import StudentJob, job_kind
from core.queue import Job, Queue
from orchestration.report import read_rows
from orchestration.train import TrainConfig, run_train

ROOT = Path(__file__).resolve().parents[2]


def write_config(path: Path, teacher: str, student: str, mode: str, **top) -> Path:
    """A run small enough for a test: 1 round, 2 training contexts x 2 edits, 2 held-out contexts.

    threshold -1 rewards every scored edit, so the SFT update always runs (a random tiny model
    rarely gains anything)."""
    cfg = {
        "teacher": {"model": teacher, "threads": 1,
                    "generation": {"max_new_tokens": 12, "batch_size": 8, "dtype": "fp32"},
                    "sft": {"epochs": 1, "batch_size": 2, "lora_r": 4, "lora_alpha": 8}},
        "students": [{"model": student, "threads": 1, "answer": {"max_new_tokens": 4},
                      "lora": {"r": 4, "alpha": 8}, "train": {"epochs": 1, "batch_size": 4, "dtype": "fp32"}}],
        "data": {"source": "demo", "limit": 4}, "heldout": {"source": "demo", "offset": 20, "limit": 2},
        "rounds": 1, "contexts_per_round": 2, "edits_per_context": 2,
        "reward": {"rule": "threshold", "delta": -1.0},
        "workers": {"mode": mode, "lease_s": 2.0, "poll_s": 0.05, "threads": 1},
        **top,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def poisoned(ctx) -> StudentJob:
    """A job that fails on every delivery: its context (under an id of its own, so that no cached
    baseline stands in for it) has no questions to score."""
    from dataclasses import replace

    return StudentJob("knowledge", "edit", (replace(ctx, context_id="poisoned", questions=()),), ("A fact.",))


def expected_keys(student: str) -> set[str]:
    train = load_contexts("demo", limit=2)
    heldout = load_contexts("demo", offset=20, limit=2)
    keys = {f"{c}/{h.context_id}@{student}" for h in heldout for c in ("base", "passage")}
    keys |= {f"v{v}/heldout/{h.context_id}/0@{student}" for h in heldout for v in (0, 1)}
    keys |= {f"r0/{t.context_id}/{i}@{student}" for t in train for i in range(2)}
    return keys


def result_keys(run: Path) -> list[str]:
    return [json.loads(x)["key"] for x in (run / "results.jsonl").read_text().splitlines()]


def check_complete(run: Path, student: str) -> None:
    """Exactly the expected results: none lost, none twice, in the queue and in results.jsonl."""
    keys = result_keys(run)
    assert len(keys) == len(set(keys)), "a result was recorded twice"
    assert set(keys) == expected_keys(student)
    with Queue(run / "queue.sqlite") as q:
        assert set(q.results()) == expected_keys(student)
    rows = read_rows(run)
    assert [r.round for r in rows] == [0, 1] and [r.teacher_version for r in rows] == [0, 1]


def start_driver(cfg: Path, run: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestration.cli", "train", str(cfg), f"run_dir={run}"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(pred, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"driver exited ({proc.returncode}) before {what}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def leased_job(run: Path):
    if not (run / "queue.sqlite").exists():
        return None
    with Queue(run / "queue.sqlite") as q:
        rows = [j for j in q.jobs(states=["leased"]) if j["key"].startswith("r0/")]
        if not rows:
            return None
        att = q.attempts(rows[0]["key"])[-1]
        return rows[0]["key"], att["worker"]


def test_inline_run_then_resume(tmp_path, capsys, tiny_chat_model, tiny_model):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_chat_model, tiny_model, "inline")
    run = tmp_path / "run"
    cfg, resolved = load_config(TrainConfig, cfg_path, [f"run_dir={run}"])
    rows = run_train(cfg, resolved)
    check_complete(run, tiny_model)
    out = capsys.readouterr().out  # the final table's paired lines, with their counts
    n_q = sum(len(c.questions) for c in load_contexts("demo", offset=20, limit=2))
    for pair in ("v1 - v0", "v1 - passage"):
        line = next(x for x in out.splitlines() if pair in x)
        assert line.count(f"(2 contexts, {n_q} q.)") == 2, line
    assert rows[0].rewards["rewarded"] == 4 and rows[0].new_version == 1
    manifest = json.loads((run / "checkpoints" / "v1" / "manifest.json").read_text())
    edits = [json.loads(x) for x in (run / "edits.jsonl").read_text().splitlines()]
    assert manifest["edit_ids"] == [e["edit_id"] for e in edits if e["purpose"] == "train"]
    assert manifest["parent_version"] == 0 and manifest["round"] == 0
    assert all(e["prompt"] and e["template"] == "implications" for e in edits)
    assert rows[1].heldout[tiny_model]["n_questions"] > 0 and rows[0].reference is not None
    # roles=split: the student never follows the teacher's versions
    assert [r.students for r in rows] == [{tiny_model: tiny_model}] * 2

    before = (run / "results.jsonl").read_text()
    again = run_train(cfg, resolved)  # resume of a finished run: nothing redone
    assert (run / "results.jsonl").read_text() == before and len(again) == 2

    changed, changed_resolved = load_config(TrainConfig, cfg_path, [f"run_dir={run}", "edits_per_context=3"])
    with pytest.raises(ConfigError, match="edits_per_context"):
        run_train(changed, changed_resolved)


def test_reference_baseline_on_the_loglik_signal(tmp_path, tiny_chat_model, tiny_model):
    """reward.baseline=reference queues the passage-only adaptation of each training context, and
    every gain is the edit's log-likelihood minus that reference's (rewards.jsonl, both gains)."""
    from core.records import StudentResult

    cfg_path = write_config(tmp_path / "c.yaml", tiny_chat_model, tiny_model, "inline",
                            reward={"rule": "threshold", "delta": -100.0, "baseline": "reference", "signal": "loglik"})
    run = tmp_path / "run"
    cfg, resolved = load_config(TrainConfig, cfg_path, [f"run_dir={run}"])
    rows = run_train(cfg, resolved)
    train = load_contexts("demo", limit=2)
    refs = {f"passage/{t.context_id}@{tiny_model}" for t in train}
    assert set(result_keys(run)) == expected_keys(tiny_model) | refs
    results = {r.key: r for r in map(StudentResult.from_json, (run / "results.jsonl").read_text().splitlines())}
    rewards = [json.loads(x) for x in (run / "rewards.jsonl").read_text().splitlines()]
    assert len(rewards) == 4 and {(r["baseline"], r["signal"], r["round"]) for r in rewards} == {("reference", "loglik", 0)}
    for rw in rewards:
        res, ref = results[f"{rw['edit_id']}@{tiny_model}"], results[f"passage/{rw['context_id']}@{tiny_model}"]
        assert rw["gain"] == pytest.approx(res.loglik - ref.loglik) and rw["rewarded"]
        assert rw["gains"][tiny_model]["base"] == pytest.approx(res.loglik - res.baseline_loglik)
    stats = rows[0].rewards
    assert (stats["baseline"], stats["signal"], stats["rewarded"]) == ("reference", "loglik", 4)
    assert stats["mean_gain"] == pytest.approx(stats["mean_gain_reference"])


def test_loglik_signal_is_refused_for_arc(tmp_path):
    with pytest.raises(ConfigError, match="reward.signal=loglik"):
        cfg, resolved = load_config(TrainConfig, ROOT / "configs" / "arc_demo.yaml",
                                    ["reward.signal=loglik", f"run_dir={tmp_path / 'run'}"])
        run_train(cfg, resolved)
    assert not (tmp_path / "run").exists()


def test_sigkill_worker_holding_a_lease(tmp_path, tiny_chat_model, tiny_model):
    # Enough epochs that a job takes a while, so the kill lands while the lease is held.
    cfg_path = write_config(tmp_path / "c.yaml", tiny_chat_model, tiny_model, "process")
    run = tmp_path / "run"
    driver = start_driver(cfg_path, run)
    try:
        key, worker = wait_for(lambda: leased_job(run), 120, "a training job to be leased", driver)
        with Queue(run / "queue.sqlite") as q:
            row = next(j for j in q.jobs() if j["key"] == key)
            assert row["state"] == "leased" and q.attempts(key)[-1]["outcome"] is None
        os.kill(int(worker.split(":")[1]), signal.SIGKILL)
        out, _ = driver.communicate(timeout=240)
    finally:
        driver.kill()
    assert driver.returncode == 0, out[-3000:]
    assert "restarting it" in out
    check_complete(run, tiny_model)
    with Queue(run / "queue.sqlite") as q:
        attempts = q.attempts(key)
    assert [a["outcome"] for a in attempts] == ["expired", "acked"] and attempts[0]["worker"] == worker


def test_sigkill_driver_mid_round_then_resume(tmp_path, tiny_chat_model, tiny_model):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_chat_model, tiny_model, "process")
    run = tmp_path / "run"
    driver = start_driver(cfg_path, run)
    try:
        def some_results():
            if not (run / "queue.sqlite").exists():
                return False
            with Queue(run / "queue.sqlite") as q:
                return 3 <= len(q.results()) < len(expected_keys(tiny_model))
        wait_for(some_results, 120, "the first results", driver)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        driver.kill()
    assert not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 2
    rerun = start_driver(cfg_path, run)
    out, _ = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, out[-3000:]
    check_complete(run, tiny_model)


def test_a_job_that_keeps_failing_is_dead_lettered_and_the_round_goes_on(tmp_path, tiny_chat_model, tiny_model):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_chat_model, tiny_model, "inline")
    run = tmp_path / "run"
    run.mkdir()
    # Put a poisoned job under the key the driver will use: put is idempotent, so it stays poisoned.
    ctx = load_contexts("demo", limit=1)[0]
    bad_key = f"r0/{ctx.context_id}/0@{tiny_model}"
    with Queue(run / "queue.sqlite") as q:
        q.put([Job(bad_key, job_kind(tiny_model), poisoned(ctx), teacher_version=0)])
    cfg, resolved = load_config(TrainConfig, cfg_path, [f"run_dir={run}"])
    rows = run_train(cfg, resolved)
    with Queue(run / "queue.sqlite") as q:
        dead = q.jobs(states=["dead"])
        assert [d["key"] for d in dead] == [bad_key] and "ZeroDivisionError" in dead[0]["last_error"]
        assert [a["outcome"] for a in q.attempts(bad_key)] == ["nacked"] * 3
    assert rows[0].jobs["dead"] == 1 and rows[0].jobs["dead_reasons"][bad_key].startswith("ZeroDivisionError")
    assert rows[0].rewards["incomplete"] == 1 and rows[0].rewards["rewarded"] == 3
    assert set(result_keys(run)) == expected_keys(tiny_model) - {bad_key}
    assert len(rows) == 2  # the round went on, and so did the next one


@pytest.mark.parametrize("override,needle", [
    ("teacher.generation.backend=vllm", "teacher.generation.backend"),
    ("teacher.prompt=nope", "nope"),
    ("contexts_per_round=20", "contexts_per_round"),
    ("heldout.offset=0", "held-out"),
    ("students=[{model: a},{model: a}]", "distinct"),
    ("reward.rule=best", "reward.rule"),
    ("reward.baseline=passage", "reward.baseline"),
    ("reward.signal=f1", "reward.signal"),
    ("workers.mode=threads", "workers.mode"),
    ("edits_per_context=0", "edits_per_context"),
    ("teacher.generation.constrain=true", "data.domain='knowledge' has free-text edits"),
])
def test_bad_train_config_is_refused_before_any_work(tmp_path, override, needle):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=needle):  # an enum value is refused at load, a range by check()
        cfg, resolved = load_config(TrainConfig, ROOT / "configs" / "demo.yaml", [override, f"run_dir={run}"])
        run_train(cfg, resolved)
    assert not run.exists()


def test_worker_command_errors_name_the_fix(tmp_path, capsys, tiny_chat_model, tiny_model):
    from orchestration.cli import main

    assert main(["worker", f"run_dir={tmp_path}", "student=x"]) == 2
    assert "start the run with `seal train` first" in capsys.readouterr().err
    cfg_path = write_config(tmp_path / "c.yaml", tiny_chat_model, tiny_model, "inline", rounds=0)
    cfg, resolved = load_config(TrainConfig, cfg_path, [f"run_dir={tmp_path / 'run'}"])
    run_train(cfg, resolved)  # rounds=0: only the evaluation of v0 and the references
    assert main(["worker", f"run_dir={tmp_path / 'run'}", "student=nobody"]) == 2
    assert tiny_model in capsys.readouterr().err
    assert main(["worker", "student=x"]) == 2
    assert "run_dir" in capsys.readouterr().err


def test_logger_without_its_package_is_refused(tmp_path):
    import importlib.util

    missing = [name for name in ("tensorboard", "wandb") if importlib.util.find_spec(name) is None]
    if not missing:
        pytest.skip("both optional logger packages are installed")
    cfg, resolved = load_config(TrainConfig, ROOT / "configs" / "demo.yaml", [f"logger={missing[0]}",
                                                                              f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=rf"pip install -e '\.\[{missing[0]}\]'"):
        run_train(cfg, resolved)


def test_a_round_without_rewarded_edits_keeps_the_teacher(tmp_path, capsys, tiny_chat_model, tiny_model):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_chat_model, tiny_model, "inline",
                            reward={"rule": "threshold", "delta": 5.0})  # no F1 gain can reach 5
    run = tmp_path / "run"
    cfg, resolved = load_config(TrainConfig, cfg_path, [f"run_dir={run}"])
    rows = run_train(cfg, resolved)
    assert "no rewarded edit" in capsys.readouterr().out
    assert rows[0].new_version is None and rows[0].sft is None
    assert [r.teacher_version for r in rows] == [0, 0] and not (run / "checkpoints").exists()
    # v0's held-out edits and their results are reused, not generated or scored again
    assert rows[1].heldout == rows[0].heldout
    assert len(result_keys(run)) == len(set(result_keys(run))) == len(expected_keys(tiny_model)) - 2


def test_same_roles_the_student_follows_the_teacher_version(tmp_path, capsys, tiny_chat_model, tiny_model):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_chat_model, tiny_model, "inline", roles="same")
    run = tmp_path / "run"
    cfg, resolved = load_config(TrainConfig, cfg_path, [f"run_dir={run}"])
    rows = run_train(cfg, resolved)
    assert "are ignored" in capsys.readouterr().out  # the listed student is not the teacher
    v1 = str(run / "checkpoints" / "v1")
    assert [r.teacher_version for r in rows] == [0, 1]
    assert [r.students for r in rows] == [{"same-model": tiny_chat_model}, {"same-model": v1}]
    keys = result_keys(run)
    assert all(k.endswith(f"@{tiny_chat_model}") for k in keys if not k.startswith("v1/"))
    assert sorted(k for k in keys if k.endswith(f"@{v1}")) == sorted(
        f"v1/heldout/{h.context_id}/0@{v1}" for h in load_contexts("demo", offset=20, limit=2))
    assert rows[1].heldout["same-model"]["n_questions"] > 0 and tiny_model not in "".join(r.to_json() for r in rows)


@pytest.mark.slow
def test_seal_train_end_to_end_on_the_packaged_models(tmp_path):
    """The default job's path on the real built-in models, shrunk: 1 round, 2 contexts x 2 edits."""
    run = tmp_path / "run"
    cfg, resolved = load_config(TrainConfig, ROOT / "configs" / "demo.yaml", [
        "rounds=1", "contexts_per_round=2", "edits_per_context=2", "heldout.limit=2",
        "teacher.generation.max_new_tokens=64", "reward.rule=threshold", "reward.delta=-1.0", f"run_dir={run}"])
    rows = run_train(cfg, resolved)
    assert [r.teacher_version for r in rows] == [0, 1] and rows[0].rewards["rewarded"] == 4
    assert rows[0].jobs["dead"] == 0 and rows[1].heldout["gemma3-270m"]["n_questions"] > 0
    assert json.loads((run / "manifest.json").read_text())["models"]["teacher"]["kind"] == "builtin"


def test_staleness_bound_drops_old_edits_with_the_reason(tmp_path, tiny_chat_model, tiny_model):
    """The local launcher applies max_teacher_lag from the queue flags the driver publishes: an edit
    of v0 is scored at v1 (lag 1) but dropped at v2, with the reason; reference jobs never go stale."""
    from core.delivery import LAG_FLAG, VERSION_FLAG
    from orchestration import dispatch, launch

    cfg_path = write_config(tmp_path / "c.yaml", tiny_chat_model, tiny_model, "inline", rounds=0)
    cfg, _ = load_config(TrainConfig, cfg_path)
    run = tmp_path / "run"
    run.mkdir()
    ctx = load_contexts("demo", limit=1)[0]
    edit = StudentJob("knowledge", "edit", (ctx,), ("A fact.",), edit_id="e")
    kind = job_kind(tiny_model)
    jobs = [Job("old", kind, edit, teacher_version=0), Job("fresh", kind, edit, teacher_version=1),
            Job("base", kind, StudentJob("knowledge", "base", (ctx,), ("",)), teacher_version=0)]
    with Queue(run / launch.QUEUE_FILE) as q:
        q.put(jobs)
        q.set_flag(VERSION_FLAG, "2")
        q.set_flag(LAG_FLAG, "1")
    dispatch.make_workers(cfg, run).wait({j.key for j in jobs}, "test", cfg.students)
    with Queue(run / launch.QUEUE_FILE) as q:
        states = {j["key"]: (j["state"], j["last_error"]) for j in q.jobs()}
        assert set(q.results()) == {"fresh", "base"}
    assert states["old"][0] == "stale" and "max_teacher_lag=1" in states["old"][1]
    assert states["fresh"][0] == states["base"][0] == "done"


def test_async_rounds_prefetch_the_next_rounds_edits(tmp_path, tiny_chat_model, tiny_model):
    """async_rounds: round 1's training edits are written by v0 while round 0 is scored, then scored
    one version late (within max_teacher_lag=1); the run completes with every key exactly once."""
    cfg_path = write_config(tmp_path / "c.yaml", tiny_chat_model, tiny_model, "process", rounds=2,
                            async_rounds=True, data={"source": "demo", "limit": 4})
    cfg, resolved = load_config(TrainConfig, cfg_path, [f"run_dir={tmp_path / 'run'}"])
    rows = run_train(cfg, resolved)
    run = tmp_path / "run"
    edits = [json.loads(x) for x in (run / "edits.jsonl").read_text().splitlines()]
    r1 = [e for e in edits if e["round"] == 1 and e["purpose"] == "train"]
    assert len(r1) == 4 and {e["teacher_version"] for e in r1} == {0}
    assert [r.new_version for r in rows[:2]] == [1, 2]
    keys = result_keys(run)
    assert len(keys) == len(set(keys))
    scored_r1 = [k for k in keys if k.startswith("r1/")]
    assert len(scored_r1) == 4 and rows[1].jobs["stale"] == 0
    with Queue(run / "queue.sqlite") as q:
        assert {j["teacher_version"] for j in q.jobs() if j["key"].startswith("r1/")} == {0}


def test_same_roles_keep_the_learning_rate_of_v0s_model():
    from orchestration.train_config import students_at

    cfg = TrainConfig(roles="same")
    cfg.teacher.model = "gemma3-270m"  # a built-in with its own rate; its versions are folders
    ((_, s),) = students_at(cfg, "runs/x/checkpoints/v1")
    assert s.model == "runs/x/checkpoints/v1" and s.train.learning_rate == 3e-4
    cfg.students[0].train.learning_rate = 5e-4  # a set rate wins
    assert students_at(cfg, "runs/x/checkpoints/v2")[0][1].train.learning_rate == 5e-4


def test_rounds_take_fresh_contexts_unless_reused():
    from orchestration.train_config import contexts_of

    cfg = TrainConfig(rounds=2, contexts_per_round=2)
    train = list("abcdef")
    assert [contexts_of(cfg, train, r) for r in range(3)] == [["a", "b"], ["c", "d"], []]
    cfg.reuse_contexts = True  # SEAL's ARC: the same tasks every round; the final step trains nothing
    assert [contexts_of(cfg, train, r) for r in range(3)] == [["a", "b"], ["a", "b"], []]


def test_drop_unfinished_leaves_cut_edits_out_of_the_sft_set(tmp_path, tiny_chat_model, tiny_model):
    """teacher.sft.drop_unfinished: every rewarded edit cut at max_new_tokens stays out of the SFT
    set, and the manifest counts them (12 tokens from the seeded random tiny model: some edits are cut,
    some end)."""
    cfg_path = write_config(tmp_path / "c.yaml", tiny_chat_model, tiny_model, "inline")
    run = tmp_path / "run"
    cfg, resolved = load_config(TrainConfig, cfg_path, [f"run_dir={run}", "teacher.sft.drop_unfinished=true",
                                                       "edits_per_context=4"])
    rows = run_train(cfg, resolved)
    edits = [json.loads(x) for x in (run / "edits.jsonl").read_text().splitlines()]
    train = [e for e in edits if e["purpose"] == "train"]
    whole = [e["edit_id"] for e in train if e["finished"]]
    assert rows[0].rewards["rewarded"] == len(train) == 8 and 0 < len(whole) < len(train)
    manifest = json.loads((run / "checkpoints" / "v1" / "manifest.json").read_text())
    assert manifest["edit_ids"] == whole and manifest["dropped_unfinished"] == len(train) - len(whole)


def test_a_process_worker_of_a_same_roles_run_trains_at_v0s_learning_rate(tmp_path, tiny_model):
    """roles=same whose v0 is gemma3-270m (default rate 3e-4): a `seal worker` process serving the
    version checkpoints/v1 trains at v0's rate, as `students_at` says, not at the 1e-3 of a folder."""
    import shutil

    from core.jobs import job_kind
    from core.runs import open_run

    run = tmp_path / "run"
    cfg_path = write_config(tmp_path / "c.yaml", "gemma3-270m", tiny_model, "process", roles="same")
    _, resolved = load_config(TrainConfig, cfg_path, [f"run_dir={run}"])
    open_run("train", str(run), resolved)
    v1 = str(shutil.copytree(tiny_model, run / "checkpoints" / "v1"))  # only its learning rate matters here
    c = load_contexts("demo", limit=1)[0]
    with Queue(run / "queue.sqlite") as q:
        q.put([Job("r1/edit", job_kind(v1), StudentJob("knowledge", "edit", (c,), (c.context,), edit_id="r1/edit"),
                   teacher_version=1, round=1)])
    subprocess.run([sys.executable, "-m", "orchestration.cli", "worker", f"run_dir={run}", f"student={v1}",
                    "until=drained"], cwd=ROOT, check=True, capture_output=True, timeout=300)
    with Queue(run / "queue.sqlite") as q:
        (result,) = q.results().values()
    assert result["student"] == v1
    assert result["train"]["learning_rate"] == 3e-4
