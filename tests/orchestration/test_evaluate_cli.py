"""`seal evaluate` without a teacher (configs/student_demo.yaml: the student inner loop alone) on a
tiny checkpoint folder, through the CLI: run folder, tables, resume, errors."""

import csv
import json

import pytest

from core.contexts import demo_records
from core.queue import Queue
from orchestration.cli import main


def args(tiny_model, run_dir, *extra):
    return ["evaluate", "configs/student_demo.yaml", f"students.0.model={tiny_model}", "data.limit=2",
            f"run_dir={run_dir}", "students.0.train.epochs=1", "students.0.answer.max_new_tokens=3",
            "students.0.lora.r=2", "bootstrap=50", *extra]


def test_evaluate_without_a_teacher_writes_run_and_resumes(tiny_model, tmp_path, capsys):
    edits = tmp_path / "edits.json"
    edits.write_text(json.dumps([{**r, "completions": ["One fact.", "Two facts.\nThree."]} for r in demo_records()[:2]]))
    run = tmp_path / "run"
    argv = args(tiny_model, run, "conditions=[base,passage,file]", f"edits={edits}")
    assert main(argv) == 0
    with open(run / "evaluate.csv") as f:
        rows = {r["condition"]: r for r in csv.DictReader(f)}
    n_q = sum(len(r["questions"]) for r in demo_records()[:2])
    assert set(rows) == {"base", "passage", "file"}
    n = {c: int(r["n_questions"]) for c, r in rows.items()}
    assert n == {"base": n_q, "passage": n_q, "file": 2 * n_q}  # each question once per edit
    results = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    conditions = [r["condition"] for r in results]
    assert conditions.count("base") == 2 and conditions.count("passage") == 2 and conditions.count("file") == 4
    assert len({r["key"] for r in results}) == 8 and {r["sample"] for r in results if r["condition"] == "file"} == {0, 1}
    assert (run / "config.yaml").is_file() and (run / "manifest.json").is_file()
    assert "Held-out accuracy" in capsys.readouterr().out

    # A crash mid-write leaves a torn line: resume drops it and writes that result again from the
    # queue's ledger, without redoing any job.
    text = (run / "results.jsonl").read_text().splitlines()
    (run / "results.jsonl").write_text("\n".join(text[:-1]) + "\n" + text[-1][:20])
    assert main(argv) == 0
    again = (run / "results.jsonl").read_text().splitlines()
    assert len(again) == 8 and again[:7] == text[:7] and sorted(again) == sorted(text)
    with Queue(run / "queue.sqlite") as q:
        assert q.counts()["done"] == 8


def test_resume_with_other_config_is_refused(tiny_model, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(args(tiny_model, run, "conditions=[base]")) == 0
    assert main(args(tiny_model, run, "conditions=[base]", "students.0.train.learning_rate=0.5")) == 2
    assert "(keys: students.0.train.learning_rate)" in capsys.readouterr().err


@pytest.mark.parametrize("extra,needle", [
    (["conditions=[base,bogus]"], "conditions="),
    (["conditions=[file]"], "edits= is not set"),
    (["data.source=/nonexistent/file.json"], "does not exist"),
])
def test_bad_input_clear_error(tiny_model, tmp_path, capsys, extra, needle):
    assert main(args(tiny_model, tmp_path / "r", *extra)) == 2
    assert needle in capsys.readouterr().err


def test_edits_file_missing_a_context(tiny_model, tmp_path, capsys):
    edits = tmp_path / "edits.json"
    rec = demo_records()[0]
    edits.write_text(json.dumps([{"title": rec["title"], "context": rec["context"], "completions": ["x"]}]))
    assert main(args(tiny_model, tmp_path / "r", "conditions=[file]", f"edits={edits}")) == 2
    assert "no completions for 1 context" in capsys.readouterr().err
