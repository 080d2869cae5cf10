"""The README's quickstart config runs as written: the YAML block between the ``<!-- quickstart -->``
markers of README.md, with only the model names (tiny in-process models), the data path and
``run_dir`` changed, through the `seal` CLI as a user would run it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from core.contexts import demo_records, validate_records

ROOT = Path(__file__).resolve().parents[1]


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {marker} -->\n```yaml\n(.*?)```\n<!-- /{marker} -->", text, re.S)
    assert m, f"README.md has no ```yaml block between <!-- {marker} --> and <!-- /{marker} -->"
    return m.group(1)


def test_readme_data_example_is_a_valid_record():
    block = re.search(r"```json\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    validate_records([json.loads(block)], "README.md's example")


def test_readme_quickstart_runs(tmp_path, tiny_chat_model, tiny_model):
    cfg = yaml.safe_load(readme_block("quickstart"))
    n = cfg["heldout"]["offset"] + cfg["heldout"]["limit"]
    data = tmp_path / Path(cfg["data"]["source"]).name  # the user's passages: demo records, as JSONL
    data.write_text("".join(json.dumps(r) + "\n" for r in demo_records()[:n]))
    # the overrides: models, data path, run folder; nothing else
    cfg["teacher"]["model"] = tiny_chat_model
    for s in cfg["students"]:
        s["model"] = tiny_model
    cfg["data"]["source"] = cfg["heldout"]["source"] = str(data)
    cfg["run_dir"] = str(tmp_path / "run")
    (tmp_path / "my_run.yaml").write_text(yaml.safe_dump(cfg))

    p = subprocess.run([sys.executable, "-m", "orchestration.cli", "train", str(tmp_path / "my_run.yaml")],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    run = tmp_path / "run"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(cfg["rounds"] + 1))
    edits = [json.loads(x) for x in (run / "edits.jsonl").read_text().splitlines()]
    n_train = cfg["rounds"] * cfg["contexts_per_round"] * cfg["edits_per_context"]
    assert sum(e["purpose"] == "train" for e in edits) == n_train
    rewards = [json.loads(x) for x in (run / "rewards.jsonl").read_text().splitlines()]
    assert len(rewards) == n_train and {r["baseline"] for r in rewards} == {"reference"}
    heldout = rows[-1]["heldout"][tiny_model]
    assert heldout["n_questions"] == sum(len(r["questions"]) for r in demo_records()[cfg["heldout"]["offset"]:n])
    assert "Held-out accuracy" in p.stdout and f"run folder: {run}" in p.stdout
