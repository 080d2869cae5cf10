"""Edit ids and job keys round-trip through their typed records, on what a run folder of the
commit before the records (4db23af) wrote, and on the formats of every command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestration.keys import CondKey, EditId, JobKey

# Every job key and edit id in the run folders that 4db23af wrote: `make demo`
# (real models, a fresh clone) and the tiny-model runs of
# tests/orchestration/test_{train,evaluate,arc_train,compare,generate_cli,continual}.py
# (model folders renamed tiny-base / tiny-chat / runs/...: they were temporary paths; the staleness
# test's hand-written keys left out).
BEFORE = json.loads((Path(__file__).parent / "run_keys_4db23af.json").read_text())


def test_every_key_of_a_pre_change_run_folder_round_trips():
    assert len(BEFORE["job_keys"]) >= 140 and len(BEFORE["edit_ids"]) >= 50
    for k in BEFORE["job_keys"]:
        assert str(JobKey.parse(k)) == k
    for e in BEFORE["edit_ids"]:
        assert str(EditId.parse(e)) == e
    kinds = {type(JobKey.parse(k).subject).__name__ for k in BEFORE["job_keys"]}
    assert kinds == {"EditId", "CondKey"}  # edits' jobs and the reference / evaluate conditions


@pytest.mark.parametrize("key, subject", [
    ("r2/ab12/4@gemma3-270m", EditId("ab12", 4, round=2)),
    ("v3/heldout/ab12/0@org/model-1", EditId("ab12", 0, version=3)),
    ("passage/ab12@runs/x/checkpoints/v1", CondKey("passage", ("ab12",))),
    ("s1/default_ttt/ab12+cd34@m", CondKey("default_ttt", ("ab12", "cd34"), seed=1)),
    ("s0/teacher/ab12/2@m", CondKey("teacher", ("ab12",), seed=0, sample=2)),
])
def test_job_keys_parse_into_their_parts(key, subject):
    k = JobKey.parse(key)
    assert k.subject == subject and str(k) == key and k.model == key.partition("@")[2]


def test_seeds_and_the_seedless_key_of_evaluate():
    k = JobKey.parse("s3/file/ab12+cd34/1@m")
    assert (k.seed, k.without_seed(), k.condition, k.heldout_version) == (3, "file/ab12+cd34/1@m", "file", None)
    base = JobKey.parse("base/ab12@m")
    assert (base.seed, base.without_seed(), base.condition) == (0, "base/ab12@m", "base")
    assert JobKey.parse("v2/heldout/ab12/0@m").heldout_version == 2


def test_edit_ids_of_every_command():
    assert [EditId.parse(x).purpose for x in ("r0/ab/1", "v1/heldout/ab/0", "ab/3", "ab")] == \
        ["train", "heldout", "generate", "generate"]
    assert str(EditId.train(1, "ab", 2)) == "r1/ab/2" and str(EditId.heldout(4, "ab", 0)) == "v4/heldout/ab/0"


@pytest.mark.parametrize("bad", ["", "no-model-part", "r0/ab/1@", "a/b/c/d/e@m", "ab@m"])
def test_malformed_keys_are_refused_with_the_formats(bad):
    with pytest.raises(ValueError, match="not a"):
        JobKey.parse(bad)


@pytest.mark.parametrize("bad", ["r0/ab", "a/b/c", "ab/x", "a@b"])
def test_malformed_edit_ids_are_refused(bad):
    with pytest.raises(ValueError, match="not an edit id"):
        EditId.parse(bad)
