"""Bad input is refused before any work, as one `seal: error:` line naming the key or file and the fix.

Every row runs a command in process through `cli.main` with model loading patched to fail, so a row
that gets as far as loading a model fails (tokenizers may load: the prompt-length check needs one).
Shared sub-configs (teacher, student, data, workers) are tried through every command that loads
them, under the dotted key each command gives them (``students.0.`` in train, ``train.teacher.`` in
compare). Config errors must leave no run folder behind.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from core.contexts import demo_records
from orchestration.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {"train": "demo.yaml", "generate": "generate_demo.yaml",
           "evaluate": "evaluate_demo.yaml", "continual": "continual_demo.yaml", "compare": "compare_roles.yaml"}
HUGE_CHARS = 2_000_000


@pytest.fixture(autouse=True)
def no_model_loads(monkeypatch):
    import transformers

    import student.model
    import teacher.versions
    from core import models

    def refuse(*args, **kwargs):
        raise AssertionError("model loaded")

    for module in (models, student.model, teacher.versions):
        monkeypatch.setattr(module, "load_model", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Data and edits files, written once: {name: path}."""
    d = tmp_path_factory.mktemp("bad-input")
    rec = demo_records()[0]
    huge = {"title": "A huge passage", "context": (rec["context"] + " ") * (HUGE_CHARS // len(rec["context"])),
            "questions": rec["questions"]}
    # the huge file's other record is one no shipped config trains or holds out (0-19, 20-25)
    out = {"dup": [rec, dict(rec)], "empty": [], "huge": [demo_records()[27], huge],
           "no_completions": [{**r, "completions": [] if i == 1 else ["A fact."]} for i, r in enumerate(demo_records())]}
    paths = {}
    for name, content in out.items():
        paths[name] = str(d / f"{name}.json")
        Path(paths[name]).write_text(json.dumps(content))
    # a file that is not UTF-8: a UTF-16 export (BOM b"\xff\xfe"), as JSON, JSONL and YAML
    for name, suffix, text in [("not_utf8", "json", json.dumps([rec])), ("not_utf8_jsonl", "jsonl", json.dumps(rec)),
                               ("not_utf8_yaml", "yaml", "rounds: 1\n"), ("not_utf8_edits", "json", "[]")]:
        paths[name] = str(d / f"{name}.{suffix}")
        Path(paths[name]).write_bytes(text.encode("utf-16"))
    paths["bad_jsonl"] = str(d / "bad.jsonl")
    Path(paths["bad_jsonl"]).write_text(json.dumps(rec) + "\n{not json\n")
    paths["bad_yaml"] = str(d / "bad.yaml")
    Path(paths["bad_yaml"]).write_text("teacher:\n  model: [smollm2\nrounds: 1\n")
    paths["list_yaml"] = str(d / "list.yaml")
    Path(paths["list_yaml"]).write_text("- rounds\n- 1\n")
    paths["dup_title"] = rec["title"]
    paths["empty_title"] = demo_records()[1]["title"]
    return paths


def argv(command: str, run: Path, *overrides: str) -> list[str]:
    where = f"out={run / 'edits.json'}" if command == "generate" else f"run_dir={run}"
    return [command, str(ROOT / "configs" / CONFIGS[command]), *overrides, where]


def refused(capsys, args: list[str], *needles: str) -> str:
    """Run ``seal args``; assert one error line holding every needle, and no traceback."""
    code = main(args)
    out, err = capsys.readouterr()
    lines = [x for x in err.splitlines() if x.startswith("seal: error:")]
    assert code == 2 and len(lines) == 1, f"exit {code}, stderr:\n{err}"
    assert all(n in lines[0] for n in needles), lines[0]
    assert "Traceback" not in out + err and "model loaded" not in err
    return lines[0]


def fill(items, files: dict, tmp_path: Path) -> list[str]:
    return [x.format(tmp=tmp_path, **files) for x in items]


# ----- shared sub-configs, through every command that loads them ---------------------------------
TEACHER_AT = {"train": "teacher.", "generate": "teacher.", "evaluate": "teacher.", "continual": "teacher.",
              "compare": "train.teacher."}
TEACHER = [  # (override under the teacher node, the key the error names)
    ("sft.save=bogus", "sft.save"),
    ("sft.keep_last=-1", "sft.keep_last"),
    ("generation.temperature=0", "generation.temperature"),
    ("generation.top_p=0", "generation.top_p"),
    ("generation.dtype=fp8", "generation.dtype"),
    ("generation.batch_size=0", "generation.batch_size"),
    ("generation.backend=tgi", "generation.backend"),
    ("max_prompt_tokens=0", "max_prompt_tokens"),
    ("device=gpu", "device"),
    ("device=cuda:1", "device"),
    ("prompt=nope", "prompt"),
    ("model=nope-model", "model"),
    ("model={tmp}/no/such/teacher", "model"),
]


@pytest.mark.parametrize("command", list(TEACHER_AT))
@pytest.mark.parametrize("override,key", TEACHER, ids=[t[0].split("=")[0] + "=" + t[0].split("=")[1][:8] for t in TEACHER])
def test_bad_teacher_value(capsys, tmp_path, files, command, override, key):
    at = TEACHER_AT[command]
    run = tmp_path / "run"
    refused(capsys, argv(command, run, *fill([at + override], files, tmp_path)), at + key)
    assert not run.exists()


STUDENT_AT = {"train": "students.0.", "evaluate": "students.0.", "continual": "student.",
              "compare": "train.students.0.", "worker": "students.0."}
STUDENT = [
    ("train.epochs=-1", "train.epochs"),
    ("lora.r=0", "lora.r"),
    ("train.dtype=fp8", "train.dtype"),
    ("grader=foo", "grader"),
    ("train.batch_size=0", "train.batch_size"),
    ("answer.max_new_tokens=0", "answer.max_new_tokens"),
    ("answer.backend=tgi", "answer.backend"),
    ("device=cuda:x", "device"),
    ("model={tmp}/no/such/student", "model"),  # a nonexistent local path: not sent to the hub
    ("model=no-such-org/no-such-model", "model"),  # a hub id, with the hub off (HF_HUB_OFFLINE=1)
]


def worker_run(tmp_path: Path, dotted: str, value: str) -> tuple[Path, str]:
    """A train run folder whose config.yaml has ``dotted: value`` (set as plain YAML, so values the
    schema refuses can be written); returns it and the name of its first student."""
    cfg = yaml.safe_load((ROOT / "configs" / CONFIGS["train"]).read_text())
    *path, last = dotted.split(".")
    node = cfg
    for p in path:
        node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
    node[last] = yaml.safe_load(value)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "manifest.json").write_text(json.dumps({"command": "train"}))
    return run, cfg["students"][0]["model"]


@pytest.mark.parametrize("command", list(STUDENT_AT))
@pytest.mark.parametrize("override,key", STUDENT, ids=[s[0].split("=")[0] for s in STUDENT])
def test_bad_student_value(capsys, monkeypatch, tmp_path, files, command, override, key):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = STUDENT_AT[command]
    (override,) = fill([override], files, tmp_path)
    if command == "worker":
        run, student = worker_run(tmp_path, *(at + override).split("=", 1))
        refused(capsys, ["worker", f"run_dir={run}", f"student={student}"], at + key, str(run / "config.yaml"))
        assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "manifest.json"]  # no queue, no logs
        return
    run = tmp_path / "run"
    refused(capsys, argv(command, run, at + override), at + key)
    assert not run.exists()


DATA_AT = {"train": ["data.", "heldout."], "generate": ["data."], "evaluate": ["data."],
           "continual": ["data."], "compare": ["train.data.", "train.heldout."]}
DATA = [  # (overrides under the data node, the key the error names, more text it must hold)
    (["limit=-3"], "limit", ""),
    (["offset=-5"], "offset", ""),
    (["source={dup}", "offset=0"], "source", "{dup_title}"),  # one context twice
    (["source={empty}", "offset=0"], "source", "selects no contexts"),  # a [] file
    (["domain=maths"], "domain", "knowledge"),
    (["source={not_utf8}", "offset=0"], "source", "not UTF-8 text (byte 0xff at offset 0)"),
    (["source={not_utf8_jsonl}", "offset=0"], "source", "not UTF-8 text (byte 0xff at offset 0)"),
    (["source={bad_jsonl}", "offset=0"], "source", "line 2 is not valid JSON"),
]


@pytest.mark.parametrize("command,at", [(c, at) for c, ats in DATA_AT.items() for at in ats])
@pytest.mark.parametrize("overrides,key,text", DATA, ids=[d[0][0].split("=")[0] + "=" + d[0][0].split("=")[1][:12]
                                                          for d in DATA])
def test_bad_data(capsys, tmp_path, files, command, at, overrides, key, text):
    run = tmp_path / "run"
    refused(capsys, argv(command, run, *fill([at + o for o in overrides], files, tmp_path)), at + key,
            text.format(**files))
    assert not run.exists()


@pytest.mark.parametrize("command,at,extra", [
    ("train", "data.", ["rounds=1", "contexts_per_round=2"]), ("train", "heldout.", []), ("generate", "data.", []),
    ("evaluate", "data.", []), ("continual", "data.", [])])
def test_a_huge_passage_is_refused_by_its_prompt_length(capsys, tmp_path, files, command, at, extra):
    """A 2 MB passage: the teacher's prompt is counted with its tokenizer alone, before any work."""
    run = tmp_path / "run"
    line = refused(capsys, argv(command, run, f"{at}source={files['huge']}", f"{at}offset=0", *extra),
                   "teacher.max_prompt_tokens=2048", at.rstrip("."), "A huge passage")
    assert "tokens" in line
    assert not run.exists()


WORKERS_AT = {"train": "workers.", "evaluate": "workers.", "compare": "train.workers."}
WORKERS = [("lease_s=-5", "lease_s"), ("max_attempts=0", "max_attempts"), ("poll_s=0", "poll_s"),
           ("restarts=-1", "restarts"), ("per_student=0", "per_student"), ("mode=threads", "mode")]


@pytest.mark.parametrize("command", list(WORKERS_AT))
@pytest.mark.parametrize("override,key", WORKERS, ids=[w[1] for w in WORKERS])
def test_bad_workers_value(capsys, tmp_path, command, override, key):
    at = WORKERS_AT[command]
    run = tmp_path / "run"
    refused(capsys, argv(command, run, at + override), at + key)
    assert not run.exists()


# ----- command-level values ----------------------------------------------------------------------
@pytest.mark.parametrize("command,overrides,needle", [
    ("train", ["roles=maybe"], "roles"),
    ("train", ["launcher=slurm"], "launcher"),
    ("train", ["logger=mlflow"], "logger"),
    ("train", ["rounds=-1"], "rounds"),
    ("train", ["contexts_per_round=0"], "contexts_per_round"),
    ("train", ["edits_per_context=0"], "edits_per_context"),
    ("train", ["eval.k=0"], "eval.k"),
    ("train", ["reward.rule=best"], "reward.rule"),
    ("train", ["reward.aggregate=max"], "reward.aggregate"),
    ("train", ["max_teacher_lag=-1"], "max_teacher_lag"),
    ("train", ["students=[{model: gemma3-270m},{model: gemma3-270m}]"], "students"),
    ("train", ["teacher.trian.epochs=3"], "teacher.trian"),
    ("train", ["students.0.train.epochs=many"], "students.0.train.epochs"),
    ("evaluate", ["seeds=[]"], "seeds"),
    ("evaluate", ["multi_passage=0"], "multi_passage"),
    ("evaluate", ["bootstrap=0"], "bootstrap"),
    ("evaluate", ["conditions=[base,nope]"], "conditions"),
    ("evaluate", ["conditions=[file]"], "edits="),
    ("generate", ["edits_per_context=0"], "edits_per_context"),
    ("compare", ["arms=[other]"], "arms"),
    ("compare", ["train.rounds=-1"], "train.rounds"),
])
def test_bad_command_value(capsys, tmp_path, command, overrides, needle):
    run = tmp_path / "run"
    refused(capsys, argv(command, run, *overrides), needle)
    assert not run.exists()


@pytest.mark.parametrize("command,overrides,needles", [
    ("train", ["async_rounds=true", "workers.mode=inline"], ["async_rounds=true", "workers.mode=process"]),
    ("train", ["heldout.domain=arc"], ["data.domain='knowledge'", "heldout.domain='arc'"]),
    ("train", ["data.domain=arc", "data.source=synthetic", "heldout.domain=arc", "heldout.source=synthetic",
               "teacher.prompt=arc-config", "reward.signal=loglik"], ["reward.signal=loglik", "reward.signal=score"]),
    ("train", ["data.ids=[nope]"], ["data.ids", "nope"]),
    ("train", ["data.limit=3"], ["contexts_per_round=4", "need 8", "data.limit"]),
    ("train", ["heldout.offset=0"], ["also training contexts", "disjoint"]),
    ("continual", ["data.limit=1"], ["continual mode needs a sequence of 2"]),
])
def test_bad_combination(capsys, tmp_path, command, overrides, needles):
    """Combinations and selections a command cannot run, caught by its checks or at data load."""
    run = tmp_path / "run"
    refused(capsys, argv(command, run, *overrides), *needles)
    assert not run.exists()


def test_bad_worker_command(capsys, tmp_path):
    refused(capsys, ["worker", f"run_dir={tmp_path}", "student=x", "until=never"], "until")
    refused(capsys, ["worker", f"run_dir={tmp_path}", "student=x", "threads=-1"], "threads")


# ----- files ------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "compare", "evaluate"])
def test_config_file_with_bad_yaml_syntax(capsys, tmp_path, files, command):
    refused(capsys, [command, files["bad_yaml"], f"run_dir={tmp_path / 'run'}"], files["bad_yaml"], "YAML")
    refused(capsys, [command, files["list_yaml"], f"run_dir={tmp_path / 'run'}"], files["list_yaml"])
    refused(capsys, [command, str(tmp_path / "nope.yaml")], str(tmp_path / "nope.yaml"), "does not exist")
    refused(capsys, [command, files["not_utf8_yaml"], f"run_dir={tmp_path / 'run'}"], files["not_utf8_yaml"],
            "not UTF-8")
    refused(capsys, argv(command, tmp_path / "run", "rounds=[1,"), "rounds=[1,", "YAML")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command,overrides", [
    ("evaluate", ["conditions=[base,file]", "edits={tmp}/missing.json"]),
    ("continual", ["edits={tmp}/missing.json"]),
])
def test_missing_edits_file(capsys, tmp_path, files, command, overrides):
    run = tmp_path / "run"
    refused(capsys, argv(command, run, *fill(overrides, files, tmp_path)),
            f"edits file {tmp_path / 'missing.json'} does not exist; set edits=PATH")
    assert not run.exists()


@pytest.mark.parametrize("command,overrides", [
    ("evaluate", ["conditions=[base,file]", "edits={not_utf8_edits}"]),
    ("continual", ["edits={not_utf8_edits}"]),
])
def test_edits_file_that_is_not_utf8(capsys, tmp_path, files, command, overrides):
    run = tmp_path / "run"
    refused(capsys, argv(command, run, *fill(overrides, files, tmp_path)), files["not_utf8_edits"],
            "not UTF-8 text (byte 0xff at offset 0)")
    assert not run.exists()


@pytest.mark.parametrize("source,text", [("not_utf8", "not UTF-8 text"), ("bad_jsonl", "not valid JSON"),
                                         ("dup", "expected an object")])
def test_bad_arc_file(capsys, tmp_path, files, source, text):
    """ARC tasks are read by their own loader (`arc.tasks`); its errors are one line too."""
    run = tmp_path / "run"
    refused(capsys, ["train", str(ROOT / "configs" / "arc_synthetic.yaml"), f"data.source={files[source]}",
                     "data.ids=null", f"run_dir={run}"], "data.source", files[source], text)
    assert not run.exists()


@pytest.mark.parametrize("command,overrides", [
    ("evaluate", ["conditions=[file]", "edits={no_completions}", "data.offset=0", "data.limit=3"]),
    ("continual", ["edits={no_completions}", "data.offset=0", "data.limit=3"]),
])
def test_empty_completions_in_an_edits_file(capsys, tmp_path, files, command, overrides):
    run = tmp_path / "run"
    refused(capsys, argv(command, run, *fill(overrides, files, tmp_path)), files["no_completions"],
            files["empty_title"][:40], "empty 'completions'")
    assert not run.exists()


def test_corrupt_queue_file(capsys, tmp_path):
    """A run folder whose queue.sqlite is garbage: the resume names the file and the fix."""
    from core.config import load_config
    from core.runs import open_run
    from orchestration.train import TrainConfig

    run = tmp_path / "run"
    args = argv("train", run, "workers.mode=inline")
    cfg, written = load_config(TrainConfig, args[1], args[2:])
    open_run("train", str(run), written)  # the folder a first run left, with the same config
    (run / "queue.sqlite").write_bytes(b"this is not a database " * 100)
    with pytest.raises(sqlite3.DatabaseError):  # what the library raises, without the file's name
        sqlite3.connect(run / "queue.sqlite").execute("select * from jobs")
    refused(capsys, args, str(run / "queue.sqlite"), "not a valid queue file", "run_dir=")


def test_report_of_a_folder_that_is_no_run(capsys, tmp_path):
    refused(capsys, ["report", str(tmp_path)], str(tmp_path), "manifest.json")


# ----- --debug and bugs -------------------------------------------------------------------------
def test_debug_flag_and_env_show_the_traceback(capsys, monkeypatch, tmp_path):
    from core.config import ConfigError

    args = argv("train", tmp_path / "run", "teacher.sft.keep_last=-1")
    with pytest.raises(ConfigError, match="teacher.sft.keep_last"):
        main(["--debug", *args])
    monkeypatch.setenv("SEAL_DEBUG", "1")
    with pytest.raises(ConfigError, match="teacher.sft.keep_last"):
        main(args)
    monkeypatch.setenv("SEAL_DEBUG", "0")
    assert main(args) == 2 and "seal: error: teacher.sft.keep_last=-1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_unexpected_error_keeps_its_traceback(monkeypatch, tmp_path):
    from orchestration import evaluate

    def bug(self, key=""):
        raise ZeroDivisionError("a bug, not a bad input")

    monkeypatch.setattr(evaluate.EvaluateConfig, "check", bug)
    with pytest.raises(ZeroDivisionError):
        main(argv("evaluate", tmp_path / "run"))


# ----- what is accepted -------------------------------------------------------------------------
@pytest.mark.parametrize("command", list(CONFIGS))
def test_the_shipped_configs_pass_every_check_and_reach_model_loading(tmp_path, command):
    """The control for every row above: unchanged, each command gets past all its checks to the
    first model load (which the fixture turns into an error)."""
    extra = ["workers.mode=inline"] if command == "train" else ["train.workers.mode=inline"] if command == "compare" else []
    (tmp_path / "run").mkdir()  # where `seal generate` writes its output
    with pytest.raises(AssertionError, match="model loaded"):
        main(argv(command, tmp_path / "run", *extra))


def test_a_teacher_version_saved_as_an_adapter_is_accepted(tmp_path, capsys, tiny_chat_model):
    """checkpoints/v{n} with save=adapter has no config.json: its adapter_config.json, its manifest's
    parent (checked in turn) and its own tokenizer files are what make it a teacher."""
    import shutil

    from transformers import AutoTokenizer

    from core.catalog import ModelNotFound, check_model

    v1, v2 = tmp_path / "checkpoints" / "v1", tmp_path / "checkpoints" / "v2"
    shutil.copytree(tiny_chat_model, v1)
    (v1 / "manifest.json").write_text(json.dumps({"version": 1, "save": "merged", "parent": tiny_chat_model}))
    v2.mkdir()
    AutoTokenizer.from_pretrained(v1).save_pretrained(v2)
    (v2 / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (v2 / "manifest.json").write_text(json.dumps({"version": 2, "save": "adapter", "parent": "../v1"}))
    check_model(str(v2), "teacher.model")
    with pytest.raises(AssertionError, match="model loaded"):  # past the checks and the prompt lengths
        main(argv("generate", tmp_path, f"teacher.model={v2}"))
    shutil.rmtree(v1)
    with pytest.raises(ModelNotFound, match=r"teacher\.model \(the parent of .*v2\)=.*v1: no such folder"):
        check_model(str(v2), "teacher.model")
    refused(capsys, argv("generate", tmp_path / "run", f"teacher.model={v2}"), "teacher.model", "no such folder")
