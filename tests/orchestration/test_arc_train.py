"""The ARC domain through the unchanged drivers, on tiny in-process models: `seal train` on our
synthetic tasks (reference conditions base / default_ttt, teacher edits parsed or refused with the
reason), and one adaptation of a valid edit end to end in the student."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from core.arc.schema import EditError, parse_edit
from core.arc.tasks import synthetic_tasks
from core.config import load_config
from core.domains import arc
from orchestration.train import TrainConfig, run_train
from tests.orchestration.test_train import write_config

ROOT = Path(__file__).resolve().parents[2]

GOOD = ('{"use_basic_augmentations": true, "use_size_augmentations": false, "use_chain_augmentations": false, '
        '"use_repeat_augmentations": false, "strategy": "train_using_output_tokens", "learning_rate": 0.001, '
        '"num_train_epochs": 1}')


def arc_student(model: str) -> dict:
    return {"model": model, "threads": 1, "lora": {"r": 4, "alpha": 8},
            "train": {"epochs": 1, "batch_size": 4, "dtype": "fp32", "max_length": 256},
            "arc": {"max_examples": 6, "predict_transforms": 2, "max_new_tokens": 24,
                    "default_edit": {"num_train_epochs": 1}}}


def md_table(text: str, header: str) -> list[list[str]]:
    """The body rows (cells stripped) of the markdown table whose header row starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header)) + 2  # past the |---| row
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_seal_train_runs_the_arc_domain(tmp_path, tiny_chat_model, tiny_model):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_chat_model, tiny_model, "inline",
                            data={"domain": "arc", "source": "synthetic", "limit": 2},
                            heldout={"domain": "arc", "source": "synthetic", "offset": 2, "limit": 1},
                            students=[arc_student(tiny_model)])
    cfg, resolved = load_config(TrainConfig, cfg_path, [f"run_dir={tmp_path / 'run'}", "teacher.prompt=arc-config"])
    rows = run_train(cfg, resolved)
    results = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert set(rows[0].reference[tiny_model]) == {"base", "default_ttt"}
    assert {r["condition"] for r in results} == {"base", "default_ttt", "edit", "heldout"}
    assert all(r["grader"] == "pass@2" and r["score"] in (0.0, 1.0) for r in results)
    ttt = next(r for r in results if r["condition"] == "default_ttt")
    assert ttt["train"]["steps"] > 0 and ttt["train"]["edit"]["num_train_epochs"] == 1
    # a random tiny teacher writes no valid JSON: every edit is refused, scored 0, with its reason.
    # Each teacher-written edit (2 contexts x 2, and the held-out one per version) is refused exactly
    # when its text in edits.jsonl does not parse, with that parse error; a parsed one trains.
    lines = (tmp_path / "run" / "edits.jsonl").read_text().splitlines()
    texts = {e["edit_id"]: e["text"] for e in map(json.loads, lines)}
    written = [r for r in results if r["condition"] in ("edit", "heldout")]
    assert sorted(r["condition"] for r in written) == ["edit"] * 4 + ["heldout"] * 2
    for r in written:
        text = texts[r["key"][:-len(f"@{r['student']}")]]
        try:
            parse_edit(text, cfg.students[0].arc.limits)
        except EditError as e:
            assert r["train"] == {"invalid": str(e)} and r["score"] == 0.0, (text, r["train"])
        else:
            assert r["train"].get("steps", 0) > 0 or r["train"]["invalid"].startswith(("budget", "no_examples"))
    assert rows[0].rewards["scored"] == rows[0].rewards["rewarded"] == 4
    assert rows[0].new_version == 1  # threshold -1 rewards every scored edit


def test_a_valid_edit_trains_and_votes(tiny_chat_model):
    from omegaconf import OmegaConf

    from core.jobs import StudentJob
    from student.config import StudentConfig
    from student.model import Student
    from student.scoring import Baselines, adapt_and_score, make_grader

    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(StudentConfig), arc_student(tiny_chat_model)))
    st = Student(cfg)
    task = synthetic_tasks(1)[0]
    base = Baselines(st, make_grader("f1"), arc)
    r = adapt_and_score(st, base, "k", StudentJob("arc", "edit", (task,), (f"Here you go: {GOOD} done",)))
    assert r.train["steps"] > 0 and r.train["edit"]["use_basic_augmentations"] is True
    assert len(r.verdicts) == 1 and r.verdicts[0].score in (0.0, 1.0) and r.grader == "pass@2"
    bad = adapt_and_score(st, base, "k2", StudentJob("arc", "edit", (task,), ('{"learning_rate": __import__("os")}',),
                                                     sample=1))
    assert bad.score == 0.0 and bad.train["invalid"].startswith("bad_json")


def test_seal_evaluate_and_compare_accept_the_arc_domain(tmp_path, tiny_chat_model, tiny_model):
    """The same drivers, unchanged, with data.domain=arc: evaluate's conditions are the domain's."""
    import yaml

    from core.config import ConfigError
    from orchestration.compare import CompareConfig, run_compare
    from orchestration.evaluate import EvaluateConfig, run_evaluate

    arc_data = {"domain": "arc", "source": "synthetic", "offset": 0, "limit": 1}
    ev = {"teacher": {"model": tiny_chat_model, "threads": 1, "prompt": "arc-config",
                      "generation": {"max_new_tokens": 8, "batch_size": 8, "dtype": "fp32"}},
          "students": [arc_student(tiny_model)], "data": arc_data,
          "conditions": ["base", "default_ttt", "teacher"], "workers": {"mode": "inline"}}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(ev))
    cfg, resolved = load_config(EvaluateConfig, tmp_path / "e.yaml", [f"run_dir={tmp_path / 'ev'}"])
    rows = run_evaluate(cfg, resolved)
    assert {r["condition"] for r in rows} == {"base", "default_ttt", "teacher"}
    assert "pass@2 grader" in (tmp_path / "ev" / "evaluate.md").read_text()
    bad, _ = load_config(EvaluateConfig, tmp_path / "e.yaml", ["conditions=[base,passage]", f"run_dir={tmp_path / 'x'}"])
    try:
        run_evaluate(bad, _)
        raise AssertionError("passage is not an ARC condition")
    except ConfigError as e:
        assert "default_ttt" in str(e)

    train = yaml.safe_load(write_config(tmp_path / "t.yaml", tiny_chat_model, tiny_model, "inline",
                                        data={**arc_data, "limit": 1},
                                        heldout={**arc_data, "offset": 1, "limit": 1},
                                        students=[arc_student(tiny_model)], contexts_per_round=1,
                                        edits_per_context=1).read_text())
    train["teacher"]["prompt"] = "arc-config"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"train": train, "arms": ["same", "split"], "transfer": False}))
    cfg, resolved = load_config(CompareConfig, tmp_path / "c.yaml", [f"run_dir={tmp_path / 'cmp'}"])
    run = run_compare(cfg, resolved)
    from orchestration.compare import slug
    from orchestration.train_config import SAME

    arms = {d.name: d for d in run.iterdir() if (d / "metrics.jsonl").is_file()}
    assert set(arms) == {"same", f"split-{slug(tiny_model)}"}
    # per arm and student: each round's held-out accuracy and question count, as its metrics.jsonl has them
    expected = {}
    for name, d in arms.items():
        metrics = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        assert [m["round"] for m in metrics] == [0, 1]
        for label in metrics[0]["students"]:
            expected[(name, label)] = [(m["heldout"][label]["accuracy"], m["heldout"][label]["n_questions"])
                                       for m in metrics]
    assert set(expected) == {("same", SAME), (f"split-{slug(tiny_model)}", tiny_model)}
    report = (run / "report.md").read_text()
    per_round = {}
    for arm, label, *cells in md_table(report, "| arm | student | round 0 | round 1 |"):
        parsed = [re.fullmatch(r"([\d.]+) \[([\d.]+), ([\d.]+)\] n=(\d+)", c).groups() for c in cells]
        assert all(float(lo) <= float(a) <= float(hi) for a, lo, hi, _ in parsed)
        per_round[(arm, label)] = [(float(a), int(n)) for a, _, _, n in parsed]
    assert per_round == {k: [(round(a, 3), n) for a, n in v] for k, v in expected.items()}
    # the paired differences: to v0 and to ARC's reference recipe (default_ttt, not passage); no loglik on ARC
    pairs = {(arm, label, pair): (score, loglik)
             for arm, label, pair, score, loglik in md_table(report, "| arm | student | pair |")}
    assert set(pairs) == {(*k, p) for k in expected for p in ("v1 - v0", "v1 - default_ttt")}
    assert all(score.endswith("(1 contexts, 1 q.)") and loglik == "n/a" for score, loglik in pairs.values())
    # adaptations per arm: default_ttt, 1 edit, the held-out edit of v0 and v1 (base is not one)
    adaptations = {arm: int(n) for arm, _, n in md_table(report, "| arm | wall time (min) | adaptations |")}
    assert adaptations == {name: 4 for name in arms}
    assert adaptations == {name: sum(json.loads(x)["condition"] != "base"
                                     for x in (d / "results.jsonl").read_text().splitlines())
                           for name, d in arms.items()}
    assert "Transfer matrix" not in report  # transfer: false
    assert (run / "report.png").stat().st_size > 0


def test_constrained_choices_are_every_valid_edit_once():
    from core.arc.schema import EditLimits

    choices = arc.edit_choices()
    assert len(choices) == len(set(choices)) == 2 ** 4 * 2 * len(arc.LEARNING_RATES) * len(arc.EPOCHS)
    limits = EditLimits(out_of_range="reject", max_epochs=max(arc.EPOCHS))
    edits = {parse_edit(c, limits) for c in choices}  # every choice parses, with nothing clipped
    assert len(edits) == len(choices) and all(notes == () for _, notes in edits)


def test_constrain_with_the_vllm_backend_is_refused(tmp_path):
    from core.config import ConfigError

    root = Path(__file__).resolve().parents[2]
    cfg, resolved = load_config(TrainConfig, root / "configs" / "arc_synthetic.yaml",
                                ["teacher.generation.backend=vllm", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="constrain=true is implemented for the transformers backend only"):
        run_train(cfg, resolved)
    assert not (tmp_path / "run").exists()


def test_an_arc_edits_file_names_tasks_by_id_and_feeds_the_file_condition(tmp_path, tiny_model):
    import yaml

    from orchestration.evaluate import EvaluateConfig, run_evaluate

    arc_data = {"domain": "arc", "source": "synthetic", "offset": 0, "limit": 1}
    task = synthetic_tasks(1)[0]
    (tmp_path / "edits.json").write_text(json.dumps([{"task_id": task.task_id, "completions": [GOOD]}]))
    ev = {"students": [arc_student(tiny_model)], "data": arc_data, "conditions": ["file"],
          "edits": str(tmp_path / "edits.json"), "workers": {"mode": "inline"}}
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(ev))
    cfg, resolved = load_config(EvaluateConfig, tmp_path / "e.yaml", [f"run_dir={tmp_path / 'ev'}"])
    rows = run_evaluate(cfg, resolved)
    assert [(r["condition"], r["n_questions"]) for r in rows] == [("file", 1)]
    result = json.loads((tmp_path / "ev" / "results.jsonl").read_text().splitlines()[0])
    assert result["context_id"] == task.context_id and result["train"]["steps"] > 0  # GOOD ran


def test_seal_generate_refuses_the_arc_domain_up_front(tmp_path, capsys):
    from orchestration.cli import main

    out = tmp_path / "e.json"
    assert main(["generate", str(ROOT / "configs" / "generate_demo.yaml"), "data.domain=arc", "data.source=synthetic",
                 f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert "data.domain=arc" in err and "task_id" in err and not out.exists()


def test_the_reference_baseline_on_arc_is_default_ttt(tmp_path, tiny_chat_model, tiny_model):
    """reward.baseline=reference fits ARC: each training task's default_ttt adaptation is queued,
    and every gain is the edit's pass@2 minus that reference's."""
    from core.records import StudentResult

    cfg_path = write_config(tmp_path / "c.yaml", tiny_chat_model, tiny_model, "inline",
                            data={"domain": "arc", "source": "synthetic", "limit": 2},
                            heldout={"domain": "arc", "source": "synthetic", "offset": 2, "limit": 1},
                            students=[arc_student(tiny_model)], rounds=1, contexts_per_round=1,
                            reward={"rule": "threshold", "delta": -1.0, "baseline": "reference"})
    run = tmp_path / "run"
    cfg, resolved = load_config(TrainConfig, cfg_path, [f"run_dir={run}", "teacher.prompt=arc-config"])
    run_train(cfg, resolved)
    task = synthetic_tasks()[0]
    results = {r.key: r for r in map(StudentResult.from_json, (run / "results.jsonl").read_text().splitlines())}
    ref = results[f"default_ttt/{task.context_id}@{tiny_model}"]
    assert ref.train["steps"] > 0
    rewards = [json.loads(x) for x in (run / "rewards.jsonl").read_text().splitlines()]
    assert len(rewards) == 2 and all(r["baseline"] == "reference" for r in rewards)
    for rw in rewards:
        assert rw["gain"] == results[f"{rw['edit_id']}@{tiny_model}"].score - ref.score
