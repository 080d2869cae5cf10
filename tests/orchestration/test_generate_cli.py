"""`seal generate`: output format (header + SEAL records), usable by `seal evaluate edits=FILE`, resumable."""

import json
from pathlib import Path

import pytest

from core.contexts import load_contexts
from core.edits import FORMAT, read_edits
from orchestration.cli import main

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "generate_demo.yaml")


def test_generate_writes_a_seal_edits_file(tmp_path, tiny_chat_model):
    out = tmp_path / "edits.json"
    args = ["generate", CONFIG, f"teacher.model={tiny_chat_model}", "teacher.threads=1",
            "teacher.generation.max_new_tokens=6", "teacher.generation.dtype=fp32", "data.limit=3", f"out={out}",
            "sample=true", "edits_per_context=2", "teacher.generation.batch_size=4"]
    assert main(args) == 0
    raw = json.loads(out.read_text())
    assert raw["format"] == FORMAT and raw["teacher"] == {"model": tiny_chat_model, "version": 0,
                                                          "template": "implications"}
    assert raw["sampling"]["greedy"] is False and raw["data"]["limit"] == 3
    ctxs = load_contexts("demo", offset=20, limit=3)
    assert [r["context_id"] for r in raw["records"]] == [c.context_id for c in ctxs]
    assert all(len(r["completions"]) == 2 and r["prompt"].startswith("<|user|>") and r["chat"] for r in raw["records"])
    header, by_ctx = read_edits(str(out))  # what seal evaluate edits=FILE reads
    assert header["teacher"]["template"] == "implications" and set(by_ctx) == {c.context_id for c in ctxs}
    assert not (tmp_path / "edits.json.partial.jsonl").exists()


def test_generate_resumes_the_same_chunks_and_refuses_another_config(tmp_path, tiny_chat_model, monkeypatch):
    out = tmp_path / "edits.json"
    partial = tmp_path / "edits.json.partial.jsonl"
    args = ["generate", CONFIG, f"teacher.model={tiny_chat_model}", "teacher.threads=1", "sample=true",
            "edits_per_context=2", "teacher.generation.max_new_tokens=6", "teacher.generation.dtype=fp32",
            "teacher.generation.batch_size=2", "data.limit=3", f"out={out}"]  # one context per chunk
    assert main(args) == 0
    whole = json.loads(out.read_text())["records"]

    import teacher.writer as writer

    passes = []

    def interrupt(point):  # the second chunk is generated, then the run dies before saving it
        passes.append(point)
        if len(passes) == 2:
            raise KeyboardInterrupt

    out.unlink()
    monkeypatch.setattr(writer, "fault", interrupt)
    assert main(args) == 130
    lines = [json.loads(x) for x in partial.read_text().splitlines()]
    assert "made_by" in lines[0] and [r["context_id"] for r in lines[1:]] == [whole[0]["context_id"]]
    monkeypatch.setattr(writer, "fault", lambda point: None)

    refused = args[:-1] + ["teacher.generation.temperature=0.7", f"out={out}"]
    assert main(refused) == 2 and not out.exists()

    kept = {**lines[1], "completions": ["kept from an earlier run", "and this"]}
    partial.write_text("\n".join(json.dumps(x) for x in [lines[0], kept]) + "\n")
    assert main(args) == 0
    records = json.loads(out.read_text())["records"]
    assert records[0]["completions"] == ["kept from an earlier run", "and this"]
    assert records[1:] == whole[1:]  # the resumed chunks: the same samples as the uninterrupted run


@pytest.mark.parametrize("override,needle", [("edits_per_context=3", "sample=true"), ("teacher.prompt=zzz", "zzz"),
                                            ("teacher.generation.constrain=true", "constrain=false")])
def test_generate_bad_config(tmp_path, capsys, override, needle):
    assert main(["generate", CONFIG, f"out={tmp_path / 'e.json'}", override]) == 2
    assert needle in capsys.readouterr().err
