"""`seal continual` on tiny models: matrix shape, heatmap labels, merge vs one adapter, resume."""

import json
from pathlib import Path

import pytest

from orchestration.core.config import load_config
from orchestration.driver.continual import ContinualConfig, heatmap, run_continual

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("merge", [True, False])
def test_continual_matrix_heatmap_and_resume(tmp_path, tiny_model, tiny_chat_model, merge):
    run = tmp_path / "run"
    overrides = [f"teacher.model={tiny_chat_model}", "teacher.threads=1", "teacher.generation.max_new_tokens=8",
                 "teacher.generation.dtype=fp32", f"student.model={tiny_model}", "student.threads=1",
                 "student.answer.max_new_tokens=4", "student.lora.r=4", "student.lora.alpha=8",
                 "student.train.epochs=1", "student.train.dtype=fp32", "data.limit=3", f"merge={merge}",
                 f"run_dir={run}"]
    cfg, resolved = load_config(ContinualConfig, ROOT / "configs" / "continual_demo.yaml", overrides)
    out = run_continual(cfg, resolved)
    assert len(out["base"]) == 3 and [len(r) for r in out["matrix"]] == [3, 3, 3]
    assert json.loads((run / "continual.json").read_text())["matrix"] == out["matrix"]
    assert (run / "continual.png").stat().st_size > 0

    lines = (run / "continual.jsonl").read_text().splitlines()
    (run / "continual.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # as if killed before the last step
    again = run_continual(cfg, resolved)  # replays steps 0-1 (same seeds), scores only step 2
    assert again["matrix"] == out["matrix"]

    fig = heatmap([out["base"]] + out["matrix"], ["before any"] + out["labels"], out["labels"], "f1")
    ax = fig.axes[0]
    assert ax.get_title().startswith("Continual adaptation") and ax.get_xlabel().startswith("context scored")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["before any"] + out["labels"]
