"""The ARC domain through the unchanged drivers, on tiny in-process models: `seal train` on our
synthetic tasks (reference conditions base / default_ttt, teacher edits parsed or refused with the
reason), and one adaptation of a valid edit end to end in the student."""

from __future__ import annotations

import json

from orchestration.core.arc.tasks import synthetic_tasks
from orchestration.core.config import load_config
from orchestration.core.domains import arc
from orchestration.driver.train import TrainConfig, run_train
from tests.orchestration.test_train import write_config

GOOD = ('{"use_basic_augmentations": true, "use_size_augmentations": false, "use_chain_augmentations": false, '
        '"use_repeat_augmentations": false, "strategy": "train_using_output_tokens", "learning_rate": 0.001, '
        '"num_train_epochs": 1}')


def arc_student(model: str) -> dict:
    return {"model": model, "threads": 1, "lora": {"r": 4, "alpha": 8},
            "train": {"epochs": 1, "batch_size": 4, "dtype": "fp32", "max_length": 256},
            "arc": {"max_examples": 6, "predict_transforms": 2, "max_new_tokens": 24,
                    "default_edit": {"num_train_epochs": 1}}}


def test_seal_train_runs_the_arc_domain(tmp_path, tiny_chat_model, tiny_model):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_chat_model, tiny_model, "inline",
                            data={"domain": "arc", "source": "synthetic", "limit": 2},
                            heldout={"domain": "arc", "source": "synthetic", "offset": 2, "limit": 1},
                            students=[arc_student(tiny_model)])
    cfg, resolved = load_config(TrainConfig, cfg_path, [f"run_dir={tmp_path / 'run'}", "teacher.prompt=arc-config"])
    rows = run_train(cfg, resolved)
    results = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert set(rows[0]["reference"][tiny_model]) == {"base", "default_ttt"}
    assert {r["condition"] for r in results} == {"base", "default_ttt", "edit", "heldout"}
    assert all(r["grader"] == "pass@2" and r["score"] in (0.0, 1.0) for r in results)
    ttt = next(r for r in results if r["condition"] == "default_ttt")
    assert ttt["train"]["steps"] > 0 and ttt["train"]["edit"]["num_train_epochs"] == 1
    edits = [r for r in results if r["condition"] == "edit"]
    # a random tiny teacher writes no valid JSON: every edit is refused, scored 0, with its reason
    assert edits and all("invalid" in r["train"] or "steps" in r["train"] for r in edits)
    assert all(r["score"] == 0.0 for r in edits if "invalid" in r["train"])
    assert rows[0]["new_version"] == 1  # threshold -1 rewards every scored edit


def test_a_valid_edit_trains_and_votes(tiny_chat_model):
    from student.config import StudentConfig
    from student.model import Student
    from student.scoring import Baselines, adapt_and_score, make_grader

    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(StudentConfig), arc_student(tiny_chat_model)))
    st = Student(cfg)
    task = synthetic_tasks(1)[0]
    base = Baselines(st, make_grader("f1"), arc)
    r = adapt_and_score(st, base, [task], [f"Here you go: {GOOD} done"], condition="edit", completion=0, key="k")
    assert r.train["steps"] > 0 and r.train["edit"]["use_basic_augmentations"] is True
    assert len(r.verdicts) == 1 and r.verdicts[0].score in (0.0, 1.0) and r.grader == "pass@2"
    bad = adapt_and_score(st, base, [task], ['{"learning_rate": __import__("os")}'], condition="edit", completion=1,
                          key="k2")
    assert bad.score == 0.0 and bad.train["invalid"].startswith("bad_json")
