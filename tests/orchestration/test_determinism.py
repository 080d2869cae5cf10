"""Kill-resume determinism: a `seal train` run killed at any fault point and resumed ends with
exactly what an uninterrupted run with the same seeds ends with.

Each case runs `seal train` as a subprocess with ``SEAL_FAULT=<point>[:n]`` (see
`core.faults`), so the driver or a worker SIGKILLs itself there, then reruns the same
command without it, and compares the run folder's fingerprint with the uninterrupted reference run
of the same variant (plain, and ``async_rounds``). The references are run once per module.

The fingerprint holds every edit (text, sampling seed, the version that wrote it), every result
(score, baseline, per-question answers and scores, training stats), every teacher version
(sha256 of its weights; its manifest) and every metrics row. What is left out, and why:
- wall times: ``wall_s`` and ``student_wait_s`` of a metrics row; ``sft.runtime_s`` and ``sft.train_s`` of a version
  manifest (and of the metrics row that copies it); ``timings`` and ``train.train_s`` of a result;
- ``jobs.redelivered`` of a metrics row: a job whose holder was killed is delivered again, by design
  (it counts once in the results, which the fingerprint checks).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

# (point, n): the n-th pass of the point. generate:2 dies after the second chunk of round 0 was
# generated and before it was saved (the first is saved); result:3 after the third result.
FAULTS = [("generate", 2), ("result", 3), ("sft", 1), ("saved", 1), ("lease", 2)]
# plain: one worker inside the driver (a lease fault kills the driver too); async: worker processes
VARIANTS = {"plain": {"workers": {"mode": "inline"}}, "async": {"async_rounds": True}}


def write_config(path: Path, teacher: str, student: str, variant: str) -> Path:
    """2 rounds of 2 training contexts x 2 edits, 2 held-out contexts; every edit rewarded
    (threshold -1), so each round trains a version. Generation batches of 2: several chunks.
    Timing bounds are short (lease 2 s) so a killed holder's job comes back quickly."""
    cfg = {
        "teacher": {"model": teacher, "threads": 1,
                    "generation": {"max_new_tokens": 8, "batch_size": 2, "dtype": "fp32"},
                    "sft": {"epochs": 1, "batch_size": 2, "lora_r": 4, "lora_alpha": 8}},
        "students": [{"model": student, "threads": 1, "answer": {"max_new_tokens": 4},
                      "lora": {"r": 4, "alpha": 8}, "train": {"epochs": 1, "batch_size": 4, "dtype": "fp32"}}],
        "data": {"source": "demo", "limit": 4}, "heldout": {"source": "demo", "offset": 20, "limit": 2},
        "rounds": 2, "contexts_per_round": 2, "edits_per_context": 2,
        "reward": {"rule": "threshold", "delta": -1.0},
        "workers": {"mode": "process", "lease_s": 2.0, "poll_s": 0.05, "threads": 1},
    }
    for key, value in VARIANTS[variant].items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    path.write_text(yaml.safe_dump(cfg))
    return path


def seal_train(cfg: Path, run: Path, fault: str | None = None, mark: Path | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEAL_FAULT")}
    if fault:
        env |= {"SEAL_FAULT": fault, "SEAL_FAULT_MARK": str(mark)}
    return subprocess.run([sys.executable, "-m", "orchestration.cli", "train", str(cfg), f"run_dir={run}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _drop(d: dict, *keys: str) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


def fingerprint(run: Path) -> dict:
    edits = {e["edit_id"]: (e["text"], e["sampling"]["seed"], e["teacher_version"]) for e in _jsonl(run / "edits.jsonl")}
    results = {}
    for r in _jsonl(run / "results.jsonl"):
        assert r["key"] not in results, f"{r['key']} recorded twice"
        results[r["key"]] = {"score": r["score"], "baseline": r["baseline_score"], "seed": r["seed"],
                             "verdicts": r["verdicts"], "train": _drop(r["train"], "train_s")}
    versions = {}
    for v in sorted((run / "checkpoints").glob("v*")):
        manifest = json.loads((v / "manifest.json").read_text())
        manifest["sft"] = _drop(manifest["sft"], "runtime_s", "train_s")
        weights = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(v.glob("*.safetensors"))}
        versions[v.name] = {"manifest": manifest, "weights": weights}
    rows = []
    for row in _jsonl(run / "metrics.jsonl"):
        row = _drop(row, "wall_s", "student_wait_s")
        row["jobs"] = _drop(row["jobs"], "redelivered")
        if row.get("sft"):
            row["sft"] = _drop(row["sft"], "runtime_s", "train_s")
        rows.append(row)
    return {"edits": edits, "results": results, "versions": versions, "metrics": rows}


@pytest.fixture(scope="module")
def models(tiny_chat_model, tiny_model):
    return tiny_chat_model, tiny_model


@pytest.fixture(scope="module")
def references(tmp_path_factory, models):
    """The uninterrupted run of each variant, shared by every fault case."""
    out = {}
    for variant in VARIANTS:
        d = tmp_path_factory.mktemp(f"reference-{variant}")
        cfg = write_config(d / "c.yaml", *models, variant)
        done = seal_train(cfg, d / "run")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        out[variant] = fingerprint(d / "run")
    return out


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("point,n", FAULTS)
def test_a_killed_and_resumed_run_matches_the_uninterrupted_one(tmp_path, models, references, variant, point, n):
    cfg = write_config(tmp_path / "c.yaml", *models, variant)
    run, mark = tmp_path / "run", tmp_path / "fault-fired"
    first = seal_train(cfg, run, f"{point}:{n}", mark)
    assert mark.exists(), f"the {point} fault never fired:\n{first.stdout[-2000:]}{first.stderr[-2000:]}"
    if point == "lease" and variant == "async":  # a worker process died; the driver restarted it and went on
        assert first.returncode == 0 and "restarting it" in first.stderr + first.stdout, first.stderr[-3000:]
    else:  # the driver SIGKILLed itself (inline: the worker runs inside it)
        assert first.returncode == -9, first.stderr[-3000:]
        again = seal_train(cfg, run)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    got, want = fingerprint(run), references[variant]
    for part in want:  # part by part, so a failure says which part differs
        assert got[part] == want[part], f"{part} differ after a kill at {point}:{n} ({variant})"
