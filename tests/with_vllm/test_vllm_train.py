"""`seal train` end to end with both vLLM backends (configs/vllm_cpu.yaml: the demo shrunk), on the
packaged models.

The student is smollm2-135m-instruct here, not the config's gemma3-270m: the path through both engines
is the same, and a gemma3 engine (its 262k-token vocabulary) costs minutes of `make test`.
bench/vllm_train.py runs the config as it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vllm is not installed here: `make test-vllm` runs these in .venv-vllm")
pytestmark = pytest.mark.vllm

STUDENT = "smollm2-135m-instruct"
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "vllm_cpu.yaml"


def test_seal_train_runs_with_both_vllm_backends(tmp_path, figures):
    from core.config import load_config
    from core.records import StudentResult
    from core.runs import read_jsonl
    from orchestration.train import TrainConfig, run_train

    cfg, resolved = load_config(TrainConfig, CONFIG, [f"run_dir={tmp_path / 'run'}", f"students.0.model={STUDENT}"])
    assert cfg.teacher.generation.backend == "vllm" and cfg.students[0].answer.backend == "vllm"
    rows = run_train(cfg, resolved)
    run = tmp_path / "run"
    edits = [json.loads(x) for x in read_jsonl(run / "edits.jsonl")]
    results = [StudentResult.from_json(x) for x in read_jsonl(run / "results.jsonl")]
    # Every wanted edit was written (2 contexts x 2 samples, one greedy held-out edit per context and
    # version) and scored by the student, on every question, with the gold answers' log-likelihood.
    train_edits = [e for e in edits if e["purpose"] == "train"]
    assert len(train_edits) == 4 and all(e["text"] and e["n_tokens"] >= 1 for e in edits)
    assert len([r for r in results if r.condition == "edit"]) == 4
    assert all(r.verdicts and r.score is not None and r.loglik is not None for r in results)
    assert [r.round for r in rows] == [0, 1]
    held = rows[-1].heldout[cfg.students[0].model]
    assert held["n_missing"] == 0 and held["n_questions"] >= 1
    figures["seal_train_vllm"] = {"config": f"configs/vllm_cpu.yaml, student {STUDENT}", "wall_s": round(sum(r.wall_s for r in rows), 1),
                                  "rewards": rows[0].rewards, "heldout": held}
