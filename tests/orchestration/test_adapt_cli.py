"""`seal adapt` end to end on a tiny checkpoint folder: run folder, summary, resume, errors."""

import json

import pytest

from core.contexts import demo_records
from orchestration.cli import main


def args(tiny_model, run_dir, *extra):
    return ["adapt", "configs/adapt_demo.yaml", f"student.model={tiny_model}", "data.limit=2", f"run_dir={run_dir}",
            "student.train.epochs=1", "student.answer.max_new_tokens=3", "student.lora.r=2", *extra]


def test_adapt_writes_run_and_resumes(tiny_model, tmp_path, capsys):
    edits = tmp_path / "edits.json"
    edits.write_text(json.dumps([{**r, "completions": ["One fact.", "Two facts.\nThree."]} for r in demo_records()[:2]]))
    run = tmp_path / "run"
    argv = args(tiny_model, run, "conditions=[base,passage,edits]", f"edits={edits}")
    assert main(argv) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary) == {"student", "dataset", "conditions"}
    conds = summary["conditions"]
    assert conds["base"]["n_adaptations"] == 0 and conds["passage"]["n_adaptations"] == 2
    assert conds["edits"]["n_adaptations"] == 4
    n_q = sum(len(r["questions"]) for r in demo_records()[:2])
    assert conds["base"]["n_questions"] == n_q and conds["edits"]["n_questions"] == 2 * n_q
    rows = (run / "results.jsonl").read_text().splitlines()
    assert len(rows) == 8 and len({json.loads(r)["key"] for r in rows}) == 8
    assert (run / "config.yaml").is_file() and (run / "manifest.json").is_file()
    assert "accuracy" in capsys.readouterr().out

    # A crash mid-write leaves a torn line: resume drops it and redoes only that job.
    text = (run / "results.jsonl").read_text().splitlines()
    (run / "results.jsonl").write_text("\n".join(text[:-1]) + "\n" + text[-1][:20])
    assert main(argv) == 0
    rows2 = (run / "results.jsonl").read_text().splitlines()
    assert len(rows2) == 8 and rows2[:7] == text[:7]


def test_resume_with_other_config_is_refused(tiny_model, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(args(tiny_model, run, "conditions=[base]")) == 0
    assert main(args(tiny_model, run, "conditions=[base]", "student.train.learning_rate=0.5")) == 2
    assert "student.train.learning_rate" in capsys.readouterr().err


@pytest.mark.parametrize("extra,needle", [
    (["conditions=[base,bogus]"], "conditions="),
    (["conditions=[edits]"], "edits= is not set"),
    (["data.source=/nonexistent/file.json"], "does not exist"),
])
def test_bad_input_clear_error(tiny_model, tmp_path, capsys, extra, needle):
    assert main(args(tiny_model, tmp_path / "r", *extra)) == 2
    assert needle in capsys.readouterr().err


def test_edits_file_missing_a_context(tiny_model, tmp_path, capsys):
    edits = tmp_path / "edits.json"
    rec = demo_records()[0]
    edits.write_text(json.dumps([{"title": rec["title"], "context": rec["context"], "completions": ["x"]}]))
    assert main(args(tiny_model, tmp_path / "r", "conditions=[edits]", f"edits={edits}")) == 2
    assert "no completions for 1 context" in capsys.readouterr().err
