"""`seal generate`: output format (header + SEAL records), usable by `seal adapt`, resumable."""

import json
from pathlib import Path

import pytest

from orchestration.core.contexts import load_contexts
from orchestration.core.edits import FORMAT, read_edits
from orchestration.driver.cli import main

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "generate_demo.yaml")


def test_generate_writes_a_seal_edits_file(tmp_path, tiny_chat_model):
    out = tmp_path / "edits.json"
    args = ["generate", CONFIG, f"teacher.model={tiny_chat_model}", "teacher.threads=1",
            "teacher.generation.max_new_tokens=6", "teacher.generation.dtype=fp32", "data.limit=3", f"out={out}",
            "sample=true", "edits_per_context=2", "chunk_contexts=2"]
    assert main(args) == 0
    raw = json.loads(out.read_text())
    assert raw["format"] == FORMAT and raw["teacher"] == {"model": tiny_chat_model, "version": 0,
                                                          "template": "implications"}
    assert raw["sampling"]["greedy"] is False and raw["data"]["limit"] == 3
    ctxs = load_contexts("demo", offset=20, limit=3)
    assert [r["context_id"] for r in raw["records"]] == [c.context_id for c in ctxs]
    assert all(len(r["completions"]) == 2 and r["prompt"].startswith("<|user|>") and r["chat"] for r in raw["records"])
    header, by_ctx = read_edits(str(out))  # what seal adapt edits=FILE reads
    assert header["teacher"]["template"] == "implications" and set(by_ctx) == {c.context_id for c in ctxs}
    assert not (tmp_path / "edits.json.partial.jsonl").exists()


def test_generate_resumes_from_finished_chunks(tmp_path, tiny_chat_model):
    out = tmp_path / "edits.json"
    ctx = load_contexts("demo", offset=20, limit=1)[0]
    kept = {"title": ctx.title, "context": ctx.context, "context_id": ctx.context_id, "chat": True,
            "prompt": "p", "completions": ["kept from an earlier run"], "finished": [True]}
    (tmp_path / "edits.json.partial.jsonl").write_text(json.dumps(kept) + "\n")
    assert main(["generate", CONFIG, f"teacher.model={tiny_chat_model}", "teacher.threads=1",
                 "teacher.generation.max_new_tokens=4", "data.limit=2", f"out={out}"]) == 0
    records = json.loads(out.read_text())["records"]
    assert records[0]["completions"] == ["kept from an earlier run"] and len(records) == 2


@pytest.mark.parametrize("override,needle", [("edits_per_context=3", "sample=true"), ("teacher.prompt=zzz", "zzz"),
                                            ("teacher.generation.constrain=true", "constrain=false")])
def test_generate_bad_config(tmp_path, capsys, override, needle):
    assert main(["generate", CONFIG, f"out={tmp_path / 'e.json'}", override]) == 2
    assert needle in capsys.readouterr().err
