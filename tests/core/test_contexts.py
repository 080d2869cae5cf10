import json

import pytest

from core.contexts import DEMO, ContextDataError, context_id, demo_records, load_contexts, validate_records

GOOD = {"title": "T", "context": "P", "questions": [{"question": "q?", "answer": "a"}]}


@pytest.mark.parametrize("records,needle", [
    ({"title": "x"}, "expected a JSON list"),
    ([GOOD, "nope"], "record 1: expected an object"),
    ([{"context": "P", "questions": []}], "record 0: missing field 'title'"),
    ([{**GOOD, "context": ""}], "record 0: field 'context' must be a non-empty string"),
    ([{**GOOD, "questions": []}], "record 0: field 'questions' must be a non-empty list"),
    ([GOOD, {**GOOD, "questions": [{"question": "q?"}]}], "record 1: questions[0]: missing field 'answer'"),
    ([{**GOOD, "questions": [{"question": 3, "answer": "a"}]}], "questions[0]: field 'question' must be"),
])
def test_validation_names_record_and_field(records, needle):
    with pytest.raises(ContextDataError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        validate_records(records, "f.json")


def test_context_id_is_stable_and_depends_on_passage():
    # pinned: run folders key their results by these ids, so a change would orphan every saved run
    assert context_id("T", "P") == "6807d2a7dbb6"
    assert context_id("T", "P") != context_id("T", "P2")  # same title, different passage
    assert context_id("T", "P") != context_id("T2", "P")  # same passage, different title
    assert context_id("TP", "") != context_id("T", "P")  # the separator keeps title and passage apart


def test_demo_set_shape():
    recs = demo_records()
    assert len(recs) >= 24
    assert len({r["title"] for r in recs}) == len(recs)
    for r in recs:
        assert 4 <= len(r["questions"]) <= 6
        for q in r["questions"]:
            assert q["answer"] in r["context"], (r["title"], q["answer"])
            assert len(q["answer"].split()) <= 4


def test_load_file_shuffle_slice(tmp_path):
    recs = [{**GOOD, "title": f"T{i}"} for i in range(10)]
    p = tmp_path / "d.json"
    p.write_text(json.dumps(recs))
    import random

    expect = list(recs)
    random.Random(42).shuffle(expect)
    got = load_contexts(str(p), shuffle_seed=42, offset=2, limit=3)
    assert [c.title for c in got] == [r["title"] for r in expect[2:5]]
    assert got[0].context_id == context_id(got[0].title, got[0].context)
    assert len(load_contexts(DEMO)) == len(demo_records())


def test_bad_json_and_missing_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("[{")
    with pytest.raises(ContextDataError, match="not valid JSON"):
        load_contexts(str(p))
    with pytest.raises(ContextDataError, match="does not exist"):
        load_contexts(str(tmp_path / "missing.json"))


def test_jsonl_file_loads_like_the_same_records_as_json(tmp_path):
    """JSONL (one record per line, read through `datasets`) gives the same contexts as the JSON list:
    ids, passages, questions, and the same shuffle and slice. Blank lines are skipped."""
    recs = demo_records()
    (tmp_path / "d.json").write_text(json.dumps(recs))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in recs[:5]) + "\n\n"
                                      + "\n".join(json.dumps(r) for r in recs[5:]) + "\n")
    for kwargs in ({}, {"shuffle_seed": 42, "offset": 3, "limit": 7}):
        want = load_contexts(str(tmp_path / "d.json"), **kwargs)
        got = load_contexts(str(tmp_path / "d.jsonl"), **kwargs)
        assert got == want and len(got) == (7 if kwargs else len(recs))
    assert load_contexts(str(tmp_path / "d.jsonl"))[0].questions[0].answer == recs[0]["questions"][0]["answer"]


@pytest.mark.parametrize("content,needle", [
    (json.dumps(GOOD) + "\n{not json\n", "line 2 is not valid JSON"),
    (json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "questions": []}) + "\n", "record 1: field 'questions'"),
    (json.dumps(GOOD).encode("utf-16"), "not UTF-8 text (byte 0xff at offset 0)"),
])
def test_bad_jsonl_names_the_line_or_record(tmp_path, content, needle):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ContextDataError, match=needle.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_contexts(str(p))


def test_empty_jsonl_selects_nothing(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    assert load_contexts(str(tmp_path / "e.jsonl")) == []
