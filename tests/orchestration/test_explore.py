"""Template exploration distilled into the canonical prompt, ReST^EM's restart from v0 on the union
of winners, and training-round jobs that want only log-likelihoods (tiny in-process models)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from test_train import write_config

from core import rewards as R
from core.config import load_config
from core.contexts import load_contexts
from core.jobs import StudentJob
from orchestration.keys import EditId
import orchestration.train
from orchestration.train import TrainConfig, run_train


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def explore_run(tmp_path, tiny_chat_model, tiny_model, monkeypatch, *overrides, **top):
    """Two rounds, 2 contexts x 2 edits each, sample 0 under 'implications' (canonical) and sample 1
    under 'self-qa'; every scored edit rewarded. Returns (run folder, metrics rows, SFT calls)."""
    calls = []  # (parent, examples) of every SFT update, which then runs for real
    real = orchestration.train.sft_update

    def spy(parent, examples, *args, **kwargs):
        calls.append((parent, list(examples)))
        return real(parent, examples, *args, **kwargs)

    monkeypatch.setattr(orchestration.train, "sft_update", spy)  # where the recipe calls it
    cfg_path = write_config(tmp_path / "c.yaml", tiny_chat_model, tiny_model, "inline", rounds=2, **top)
    cfg, resolved = load_config(TrainConfig, cfg_path, [f"run_dir={tmp_path / 'run'}",
                                                        "teacher.explore=[implications,self-qa]", *overrides])
    got = run_train(cfg, resolved)
    return tmp_path / "run", got, calls


def test_explored_edits_train_under_the_canonical_prompt(tmp_path, tiny_chat_model, tiny_model, monkeypatch, capsys):
    run, metrics, calls = explore_run(tmp_path, tiny_chat_model, tiny_model, monkeypatch)
    edits = {e["edit_id"]: e for e in rows(run / "edits.jsonl")}
    train = [e for e in edits.values() if e["purpose"] == "train"]
    assert {(e["sample"], e["template"]) for e in train} == {(0, "implications"), (1, "self-qa")}
    assert all(e["template"] == "implications" and e["sft_prompt"] is None
               for e in edits.values() if e["purpose"] == "heldout")
    def canonical(edit_id: str) -> str:  # the prompt of the same context's sample 0, the canonical template
        e = edits[edit_id]
        return edits[str(EditId.train(e["round"], e["context_id"], 0))]["prompt"]

    for e in train:
        assert "Implications:" in canonical(e["edit_id"])
        if e["template"] == "self-qa":
            assert "Questions and answers:" in e["prompt"] and e["sft_prompt"] == canonical(e["edit_id"])
        else:
            assert e["sft_prompt"] is None
    # every SFT pair is (canonical prompt, edit): an explored edit never trains under its own prompt
    for _, examples in calls:
        for ex in examples:
            assert ex.prompt == canonical(ex.edit_id)
            assert ex.completion == edits[ex.edit_id]["text"]
    assert any(edits[ex.edit_id]["template"] == "self-qa" for _, exs in calls for ex in exs)
    # the winners' templates, per round
    for m in metrics[:2]:
        assert m.rewards["rewarded_templates"] == {"implications": 2, "self-qa": 2}
    assert "round 1: rewarded edits by template: implications 2, self-qa 2" in capsys.readouterr().out
    assert {r["template"] for r in rows(run / "rewards.jsonl")} == {"implications", "self-qa"}


@pytest.mark.parametrize("restart", [True, False])
def test_each_round_restarts_from_v0_on_the_union_of_winners(tmp_path, tiny_chat_model, tiny_model, monkeypatch,
                                                            restart):
    run, _, calls = explore_run(tmp_path, tiny_chat_model, tiny_model, monkeypatch, f"teacher.sft.restart={restart}")
    r0 = [x["edit_id"] for x in rows(run / "rewards.jsonl") if x["round"] == 0 and x["rewarded"]]
    r1 = [x["edit_id"] for x in rows(run / "rewards.jsonl") if x["round"] == 1 and x["rewarded"]]
    v2 = json.loads((run / "checkpoints" / "v2" / "manifest.json").read_text())
    assert len(calls) == 2 and [ex.edit_id for ex in calls[0][1]] == r0
    if restart:  # from v0, on round 0's winners and round 1's
        assert calls[1][0] == tiny_chat_model and v2["parent_version"] == 0
        assert v2["edit_ids"] == r0 + r1
    else:  # from v1, on round 1's winners only
        assert calls[1][0] == str(run / "checkpoints" / "v1") and v2["parent_version"] == 1
        assert v2["edit_ids"] == r1


def test_a_loglik_only_job_generates_no_answers_and_gets_the_same_reward(tiny_model):
    from student.config import StudentConfig
    from student.worker import Worker

    cfg = StudentConfig(model=tiny_model, threads=1)
    cfg.answer.max_new_tokens = 4
    cfg.train.epochs, cfg.train.dtype = 1, "fp32"
    cfg.lora.r, cfg.lora.alpha = 4, 8
    worker = Worker(cfg)
    ctx = load_contexts("demo", limit=1)[0]
    edit = ctx.context.split(". ")[0] + "."
    calls = []
    run = worker.student.answerer.run

    def counting(prompts, *args, **kwargs):
        calls.append(len(prompts))
        return run(prompts, *args, **kwargs)

    worker.student.answerer.run = counting
    worker.baselines_of("knowledge").get(ctx)  # the unadapted baseline, answered once for both jobs
    job = StudentJob("knowledge", "edit", (ctx,), (edit,), edit_id="r0/x/0", seed=3)
    ref = StudentJob("knowledge", "passage", (ctx,), ("",), seed=3)
    calls.clear()
    (with_answers, ref_answered) = worker.run_group([("a", job), ("ra", ref)])
    answered_calls = sum(calls)
    calls.clear()
    (loglik_only, ref_loglik) = worker.run_group([("b", replace(job, answer=False)), ("rb", replace(ref, answer=False))])
    assert answered_calls >= 2 * len(ctx.questions) and calls == []  # no generate call at all
    assert all(v.answer is None and v.score is None for v in loglik_only.verdicts) and loglik_only.score is None
    assert all(isinstance(v.answer, str) for v in with_answers.verdicts) and with_answers.score is not None
    assert loglik_only.loglik == pytest.approx(with_answers.loglik, abs=1e-6)
    assert R.gains(loglik_only, ref_loglik, "loglik")["reference"] == pytest.approx(
        R.gains(with_answers, ref_answered, "loglik")["reference"], abs=1e-6)
    assert loglik_only.timings["answer_s"] < with_answers.timings["answer_s"]


def test_training_round_jobs_under_the_loglik_signal_skip_answering(tmp_path, tiny_chat_model, tiny_model,
                                                                    monkeypatch):
    run, _, _ = explore_run(tmp_path, tiny_chat_model, tiny_model, monkeypatch,
                            reward={"rule": "threshold", "delta": -100.0, "baseline": "reference", "signal": "loglik"})
    results = rows(run / "results.jsonl")
    train_ctx = {c.context_id for c in load_contexts("demo", limit=4)}
    for r in results:
        trains = r["context_id"] in train_ctx
        assert all((v["answer"] is None) == trains and v["loglik"] is not None for v in r["verdicts"]), r["key"]
        assert (r["score"] is None) == trains
