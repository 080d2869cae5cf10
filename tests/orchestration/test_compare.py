"""`seal compare` and `seal report` on tiny models: arms, transfer matrix shape, the figure's labels."""

import json
from pathlib import Path

import yaml

from core.config import load_config
from orchestration.cli import main
from orchestration.compare import CompareConfig, arm_curves, build_figure, run_compare, slug, transfer_matrix


def tiny_compare_config(path: Path, teacher: str, students: list[str]) -> Path:
    student = {"threads": 1, "answer": {"max_new_tokens": 4}, "lora": {"r": 4, "alpha": 8},
               "train": {"epochs": 1, "dtype": "fp32"}}
    train = {"teacher": {"model": teacher, "threads": 1,
                         "generation": {"max_new_tokens": 8, "batch_size": 8, "dtype": "fp32"},
                         "sft": {"epochs": 1, "batch_size": 2, "lora_r": 4, "lora_alpha": 8}},
             "students": [{"model": s, **student} for s in students],
             "data": {"source": "demo", "limit": 2}, "heldout": {"source": "demo", "offset": 20, "limit": 2},
             "rounds": 1, "contexts_per_round": 2, "edits_per_context": 2,
             "reward": {"rule": "threshold", "delta": -1.0}, "workers": {"mode": "inline"}}
    path.write_text(yaml.safe_dump({"train": train, "arms": ["same", "split"], "transfer": True}))
    return path


def test_compare_writes_report_plot_and_transfer_matrix(tmp_path, tiny_chat_model, tiny_model):
    students = [tiny_model, tiny_chat_model]
    cfg, resolved = load_config(CompareConfig, tiny_compare_config(tmp_path / "c.yaml", tiny_chat_model, students),
                                [f"run_dir={tmp_path / 'run'}"])
    run = run_compare(cfg, resolved)
    arms = sorted(d.name for d in run.iterdir() if (d / "metrics.jsonl").is_file())
    assert arms == sorted(["same"] + [f"split-{slug(s)}" for s in students])
    xs, ys, cells = transfer_matrix(run)  # one row per split arm, one column per student
    assert (len(xs), len(ys), len(cells)) == (2, 2, 4) and set(ys) == set(students)
    report = (run / "report.md").read_text()
    assert "Transfer matrix" in report and all(a in report for a in arms)
    # every arm's paired lines: v1 - v0 and v1 - passage per student, with their counts
    for a in arms:
        assert f"| {a} | " in report and report.count(f"| {a} | ") >= 3
    assert report.count("| v1 - v0 |") == 3 and report.count("| v1 - passage |") == 3 and "contexts," in report

    curves = {a: arm_curves(run / a) for a in arms}
    assert [len(c["rounds"]) for cs in curves.values() for c in cs] == [2, 2, 2]
    fig = build_figure(curves, "f1")
    ax = fig.axes[0]
    assert ax.get_title() == "Held-out accuracy by ReST^EM round: same vs split roles"
    assert ax.get_xlabel().startswith("ReST^EM round") and ax.get_ylabel().startswith("held-out accuracy (f1")
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) == 3 and any(t.startswith("same / teacher's own version") for t in legend)
    assert all("n=" in t for t in legend)

    (run / "report.md").unlink()
    (run / "report.png").unlink()
    assert main(["report", str(run)]) == 0  # rebuilt from the folders alone
    assert (run / "report.png").stat().st_size > 0 and (run / "report.md").read_text() == report
    same_rows = [json.loads(x) for x in (run / "same" / "metrics.jsonl").read_text().splitlines()]
    assert same_rows[1]["students"]["same-model"].endswith("checkpoints/v1")
