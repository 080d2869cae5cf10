"""Run folders: atomic rewrites under a simulated crash, torn JSONL lines, results restored from the
queue's ledger, and ${oc.env:...} values kept out of the folder."""

from __future__ import annotations

import builtins
import io
import json
import os
import stat
from contextlib import contextmanager

import pytest
import yaml

from core.config import ConfigError, load_config
from core.queue import Queue
from core.runs import open_run, read_jsonl, write_atomic
from orchestration.continual import ContinualConfig
from orchestration.train import TrainConfig, run_train
from tests.orchestration.test_train import result_keys, write_config


class _TornWriter:
    """A file whose first write stops halfway, as a process killed in the middle of it would."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError("simulated crash in the middle of a write")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


@contextmanager
def crash_mid_write():
    """Inside: every file opened for writing (builtin open, io.open, Path.write_text) tears its first write."""
    real = io.open

    def torn_open(file, mode="r", *args, **kwargs):
        f = real(file, mode, *args, **kwargs)
        return _TornWriter(f) if "w" in mode else f

    with pytest.MonkeyPatch.context() as m:
        m.setattr(io, "open", torn_open)
        m.setattr(builtins, "open", torn_open)
        yield


def test_write_atomic_replaces_the_file_with_the_umask_permissions(tmp_path):
    p = tmp_path / "summary.json"
    p.write_text("old")
    write_atomic(p, "new\r\nline")
    assert p.read_bytes() == b"new\r\nline"  # written as given, no newline translation
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
    assert [x.name for x in tmp_path.iterdir()] == ["summary.json"]


def test_a_crash_mid_write_keeps_the_old_file(tmp_path):
    old, new = tmp_path / "report.md", tmp_path / "evaluate.md"
    old.write_bytes(b"the old report\n")
    with crash_mid_write(), pytest.raises(OSError, match="simulated crash"):
        write_atomic(old, "a new report, much longer than the old one\n" * 10)
    with crash_mid_write(), pytest.raises(OSError, match="simulated crash"):
        write_atomic(new, "a table\n")
    assert old.read_bytes() == b"the old report\n"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["report.md"]  # no partial file, no debris


def test_a_crash_before_the_rename_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "continual.json"
    p.write_text("{}")

    def crash(*args):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="before the rename"):
        write_atomic(p, '{"a": 1}')
    assert p.read_text() == "{}" and [x.name for x in tmp_path.iterdir()] == ["continual.json"]


ROWS = [json.dumps({"key": f"k{i}", "score": i}) for i in range(3)]


def test_read_jsonl_cuts_a_torn_last_line_only(tmp_path):
    p = tmp_path / "results.jsonl"
    p.write_text("\n".join(ROWS) + '\n{"key": "k3", "sco')
    assert read_jsonl(p) == ROWS
    assert p.read_text() == "".join(r + "\n" for r in ROWS)
    p.write_text(ROWS[0] + "\nnot json\n" + ROWS[1] + "\n")
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(p)


def test_a_crash_while_cutting_a_torn_line_loses_no_complete_line(tmp_path):
    p = tmp_path / "results.jsonl"
    torn = "\n".join(ROWS) + '\n{"key": "k3", "sco'
    p.write_text(torn)
    with crash_mid_write(), pytest.raises(OSError, match="simulated crash"):
        read_jsonl(p)
    assert p.read_text() == torn  # untouched: the next read cuts it
    assert read_jsonl(p) == ROWS


def test_a_finished_run_gets_its_torn_and_lost_results_back_from_the_queue(tmp_path, tiny_chat_model, tiny_model):
    cfg_path = write_config(tmp_path / "c.yaml", tiny_chat_model, tiny_model, "inline", rounds=0)
    run = tmp_path / "run"
    cfg, written = load_config(TrainConfig, cfg_path, [f"run_dir={run}"])
    run_train(cfg, written)
    with Queue(run / "queue.sqlite") as q:
        ledger = q.results()
    lines = (run / "results.jsonl").read_text().splitlines()
    assert sorted(result_keys(run)) == sorted(ledger) and len(lines) > 2
    # a crash of the last append tears the last line; another line is lost outright
    (run / "results.jsonl").write_text("".join(x + "\n" for x in lines[1:-1]) + lines[-1][: len(lines[-1]) // 2])
    run_train(cfg, written)
    keys = result_keys(run)
    assert len(keys) == len(set(keys)) and set(keys) == set(ledger)
    by_key = lambda rows: {json.loads(x)["key"]: json.loads(x) for x in rows}  # noqa: E731
    assert by_key((run / "results.jsonl").read_text().splitlines()) == by_key(lines)  # the same rows


SECRET = "sk-do-not-write-me-4242"


def test_env_interpolations_are_saved_unresolved_and_resume_matches(tmp_path, monkeypatch):
    monkeypatch.setenv("SEAL_TEST_SECRET", SECRET)
    cfg_path = tmp_path / "continual.yaml"
    cfg_path.write_text(yaml.safe_dump({"student": {"judge": {"base_url": "${oc.env:SEAL_TEST_SECRET}"}},
                                        "data": {"limit": 2}}))
    run = tmp_path / "run"
    cfg, written = load_config(ContinualConfig, cfg_path, [f"run_dir={run}"])
    assert cfg.student.judge.base_url == SECRET  # the run itself uses the value
    assert open_run("continual", cfg.run_dir, written) == run
    files = [p for p in run.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["config.yaml", "manifest.json"]
    assert not [p for p in files if SECRET in p.read_text()]
    assert "${oc.env:SEAL_TEST_SECRET}" in (run / "config.yaml").read_text()
    # resume: the same YAML matches, even once the key is rotated; another change is refused
    assert open_run("continual", cfg.run_dir, load_config(ContinualConfig, cfg_path, [f"run_dir={run}"])[1]) == run
    monkeypatch.setenv("SEAL_TEST_SECRET", "sk-rotated")
    assert open_run("continual", cfg.run_dir, load_config(ContinualConfig, cfg_path, [f"run_dir={run}"])[1]) == run
    with pytest.raises(ConfigError, match="data.limit"):
        open_run("continual", cfg.run_dir, load_config(ContinualConfig, cfg_path, [f"run_dir={run}", "data.limit=3"])[1])
    # a worker reads the saved config back and resolves the value from its own environment
    again, _ = load_config(ContinualConfig, run / "config.yaml")
    assert again.student.judge.base_url == "sk-rotated"
    assert not [p for p in run.rglob("*") if p.is_file() and SECRET in p.read_text()]


def test_a_missing_env_variable_is_refused_at_load(tmp_path, monkeypatch):
    monkeypatch.delenv("SEAL_TEST_SECRET", raising=False)
    cfg_path = tmp_path / "continual.yaml"
    cfg_path.write_text(yaml.safe_dump({"student": {"judge": {"base_url": "${oc.env:SEAL_TEST_SECRET}"}}}))
    with pytest.raises(ConfigError, match="SEAL_TEST_SECRET"):
        load_config(ContinualConfig, cfg_path)


def test_a_resumed_run_says_so_with_the_commit_it_was_made_at(tmp_path, capsys):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"a": 1})
    open_run("continual", str(tmp_path / "run"), cfg)
    assert "resuming" not in capsys.readouterr().out
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    manifest["git_commit"] = "0123456789abcdef"
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    open_run("continual", str(tmp_path / "run"), cfg)
    out = capsys.readouterr().out
    assert f"resuming {tmp_path / 'run'}: a run made at commit 0123456789ab on {manifest['started']}" in out
    assert "start afresh" in out
