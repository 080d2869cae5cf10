"""`seal evaluate` on tiny models: every student x condition, seeds, intervals, tables; bootstrap."""

import csv
import json
from pathlib import Path

import pytest

from core.config import load_config
from core.contexts import load_contexts
from core.queue import Queue
from core.stats import bootstrap_ci, spread
from orchestration.evaluate import EvaluateConfig, run_evaluate

ROOT = Path(__file__).resolve().parents[2]


def test_evaluate_two_students_all_conditions_two_seeds(tmp_path, tiny_model, tiny_chat_model):
    ctxs = load_contexts("demo", offset=20, limit=2)
    edits = tmp_path / "edits.json"  # an external edits file in the plain SEAL list format
    edits.write_text(json.dumps([{"title": c.title, "context": c.context, "completions": [c.context.split(".")[0]]}
                                 for c in ctxs]))
    student = {"threads": 1, "answer": {"max_new_tokens": 4}, "lora": {"r": 4, "alpha": 8},
               "train": {"epochs": 1, "dtype": "fp32"}}
    overrides = [f"teacher.model={tiny_chat_model}", "teacher.threads=1", "teacher.generation.max_new_tokens=8",
                 "teacher.generation.dtype=fp32", f"students=[{json.dumps({'model': tiny_model, **student})},"
                 f"{json.dumps({'model': tiny_chat_model, **student})}]", "data.limit=2",
                 "conditions=[base,passage,teacher,file]", f"edits={edits}", "seeds=[0,1]", "workers.mode=inline",
                 f"run_dir={tmp_path / 'run'}", "bootstrap=200"]
    cfg, resolved = load_config(EvaluateConfig, ROOT / "configs" / "evaluate_demo.yaml", overrides)
    rows = run_evaluate(cfg, resolved)
    n_q = sum(len(c.questions) for c in ctxs)
    assert [(r["student"], r["condition"]) for r in rows] == [
        (s, c) for s in (tiny_model, tiny_chat_model) for c in ("base", "passage", "teacher", "file")]
    for r in rows:
        assert r["n_questions"] == n_q and r["ci_low"] <= r["accuracy"] + 1e-9 and r["accuracy"] <= r["ci_high"] + 1e-9
        assert r["seeds"] == (1 if r["condition"] == "base" else 2)
    with Queue(tmp_path / "run" / "queue.sqlite") as q:  # fan-out: every student scored every job
        assert q.counts()["done"] == 2 * len(ctxs) * (1 + 2 * 3) and q.counts()["dead"] == 0
    table = (tmp_path / "run" / "evaluate.md").read_text()
    assert tiny_model in table and tiny_chat_model in table and "95% bootstrap" in table
    with open(tmp_path / "run" / "evaluate.csv") as f:
        assert len(list(csv.DictReader(f))) == 8
    # paired: each edit condition against the recipe and base, the recipe against base, per student
    paired = json.loads((tmp_path / "run" / "paired.json").read_text())
    assert [(p["student"], p["pair"]) for p in paired] == [
        (s, pair) for s in (tiny_model, tiny_chat_model)
        for pair in ("teacher - passage", "teacher - base", "file - passage", "file - base", "passage - base")]
    assert all(p["score"]["contexts"] == len(ctxs) and p["loglik"]["questions"] == n_q for p in paired)
    assert "| teacher - passage |" in table and "cluster-bootstrap" in table


def test_multi_passage_one_adaptation_on_several_contexts(tmp_path, tiny_model, tiny_chat_model):
    ctxs = load_contexts("demo", offset=20, limit=3)
    student = {"model": tiny_model, "threads": 1, "answer": {"max_new_tokens": 4}, "lora": {"r": 4, "alpha": 8},
               "train": {"epochs": 1, "dtype": "fp32"}}
    overrides = [f"teacher.model={tiny_chat_model}", "teacher.threads=1", "teacher.generation.max_new_tokens=8",
                 "teacher.generation.dtype=fp32", f"students=[{json.dumps(student)}]", "data.limit=3",
                 "multi_passage=2", "workers.mode=inline", f"run_dir={tmp_path / 'run'}", "bootstrap=100"]
    cfg, resolved = load_config(EvaluateConfig, ROOT / "configs" / "evaluate_demo.yaml", overrides)
    rows = run_evaluate(cfg, resolved)
    results = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    trained = [r for r in results if r["condition"] != "base"]
    # groups [c0, c1] and [c2], for passage and teacher: 4 adaptations, the first on two contexts at once
    assert sorted(r["context_id"] for r in trained) == sorted(
        [f"{ctxs[0].context_id}+{ctxs[1].context_id}"] * 2 + [ctxs[2].context_id] * 2)
    pair = next(r for r in trained if "+" in r["context_id"])
    assert len(pair["verdicts"]) == len(ctxs[0].questions) + len(ctxs[1].questions)
    assert all(r["n_questions"] == sum(len(c.questions) for c in ctxs) for r in rows)


def test_bootstrap_interval():
    scores = [0.0, 1.0] * 20
    lo, hi = bootstrap_ci(scores, resamples=500)
    assert lo < 0.5 < hi and (lo, hi) == bootstrap_ci(scores, resamples=500)  # seeded
    assert bootstrap_ci([0.3] * 10) == (pytest.approx(0.3), pytest.approx(0.3))
    assert spread([0.2]) == 0.0 and spread([0.1, 0.3]) == pytest.approx(0.1414, abs=1e-3)


def test_paired_cluster_bootstrap_and_per_question():
    from core.stats import fmt_paired, paired_by_context, paired_cluster_bootstrap, per_question

    same = paired_cluster_bootstrap([[(0.5, 0.5)] * 3] * 4)
    assert (same["diff"], same["lo"], same["hi"], same["contexts"], same["questions"]) == (0.0, 0.0, 0.0, 4, 12)
    shift = paired_cluster_bootstrap([[(x + 0.25, x) for x in (0.0, 0.5, 1.0)]] * 5)
    assert shift["diff"] == pytest.approx(0.25) and shift["lo"] == pytest.approx(0.25)
    # whole contexts move together: +1 on every question of half the contexts, 0 on the others.
    # Resampling contexts sees 10 independent draws, not 50, so its interval is wider than the questions'
    clusters = [[(1.0, 0.0)] * 5] * 5 + [[(0.0, 0.0)] * 5] * 5
    d = paired_cluster_bootstrap(clusters, resamples=1000)
    q_lo, q_hi = bootstrap_ci([a - b for c in clusters for a, b in c], resamples=1000)
    assert d["diff"] == pytest.approx(0.5) and d["hi"] - d["lo"] > 1.5 * (q_hi - q_lo)
    assert d == paired_cluster_bootstrap(clusters, resamples=1000)  # seeded
    # per question: the mean over a context's groups; None where any group lacks the value
    pq = per_question([("a", [1.0, 0.0, None]), ("a", [0.0, 0.0, 1.0]), ("b", [0.5])])
    assert pq == {"a": [0.5, 0.0, None], "b": [0.5]}
    got = paired_by_context(pq, {"a": [0.0, 0.0, 0.0], "c": [1.0]})  # only the context both have
    assert (got["contexts"], got["questions"], got["diff"]) == (1, 2, pytest.approx(0.25))
    assert fmt_paired(got).endswith("(1 contexts, 2 q.)")
    assert fmt_paired(paired_by_context({}, {})) == "n/a"


def test_spearman():
    from core.stats import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660, abs=1e-4)  # ties: mean ranks
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1], [2]) is None
