"""ARC data: grid validation and text form, loading the real Kaggle files, synthetic tasks, and the
test-time-training data and voting built on them."""

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.arc.augment import BASIC, FLIP_H, IDENTITY, SIZE, augmenters
from core.arc.grids import ArcDataError, decode, encode, to_grid
from core.arc.schema import ArcEdit
from core.arc.tasks import ArcTask, from_json, load_tasks, synthetic_rule, synthetic_tasks, to_json
from core.arc.ttt import (STOP, format_prompt, format_target, invert_prediction, leave_out_tasks, pass_at_2,
                          prediction_queries, ttt_examples, vote)

FEW = settings(max_examples=200, deadline=None)
ARC = Path(os.environ["SEAL_SHARED_DATA"]) / "arc" if "SEAL_SHARED_DATA" in os.environ \
    else Path(__file__).parents[2].parent / "shared" / "data" / "arc"
ALL_ON = ArcEdit(True, True, True, True, "train_using_output_tokens", 1e-4, 2)
ALL_OFF = ArcEdit(False, False, False, False, "train_using_all_tokens", 1e-4, 2)


@st.composite
def grids(draw, max_side=6, colours=10):
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    return tuple(tuple(draw(st.lists(st.integers(0, colours - 1), min_size=w, max_size=w))) for _ in range(h))


def arc_files(split: str) -> tuple[Path, Path]:
    if not ARC.is_dir():
        pytest.skip(f"no ARC data at {ARC} (set SEAL_SHARED_DATA)")
    name = {"train": "training", "eval": "evaluation"}[split]
    tag = {"train": "1B_training_set", "eval": "1B_eval_set"}[split]
    return (ARC / f"arc-agi_{name}_challenges_filtered_{tag}.json",
            ARC / f"arc-agi_{name}_solutions_filtered_{tag}.json")


# -- grids -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,needle", [
    ([], "non-empty list of rows"),
    ("0123", "non-empty list of rows"),
    ([[1, 2], [3]], "row 1 has 1 cells, row 0 has 2"),
    ([[1, 2], []], "row 1 is not a non-empty list"),
    ([[1, 10]], "row 0 cell 1 is 10"),
    ([[1, -1]], "row 0 cell 1 is -1"),
    ([[1, True]], "row 0 cell 1 is True"),
    ([[1, 2.0]], "row 0 cell 1 is 2.0"),
    ([[1, "2"]], "row 0 cell 1 is '2'"),
    ([[0] * 31], "31 columns"),
    ([[0]] * 31, "31 rows"),
])
def test_bad_grids_name_the_place_and_what_a_grid_is(value, needle):
    with pytest.raises(ArcDataError) as e:
        to_grid(value, "task 007bbfcc: train[2].output")
    msg = str(e.value)
    assert msg.startswith("task 007bbfcc: train[2].output: ") and needle in msg and "ints 0..9" in msg


def test_good_grid_becomes_tuples():
    assert to_grid([[0, 1], [2, 3]], "x") == ((0, 1), (2, 3))
    assert encode(((0, 1, 2), (3, 4, 0))) == "012\n340"


@FEW
@given(g=grids(max_side=30), tail=st.sampled_from(["", "\n", STOP, "\n\nfoo", "\nanswer: 12", "  \n\t"]))
def test_encode_decode_round_trip(g, tail):
    assert decode(encode(g) + tail) == g
    assert decode("\n  " + format_target(g)) == g


@pytest.mark.parametrize("text,expected", [
    ("12\n34\n\n56", ((1, 2), (3, 4))),      # stops at the blank line
    ("12\n34\noutput:\n5", ((1, 2), (3, 4))),
    (" 12 \r\n34\r\n", ((1, 2), (3, 4))),
    ("", None), ("   \n ", None), ("output:\n12", None), ("12\n345", None),  # ragged: wrong, not truncated
    ("1 2\n3 4", None), ("1,2", None), ("²3", None), ("-1", None), ("0" * 31, None), ("0\n" * 31, None),
    (None, None), (b"12", None), ("\x00\x01", None),
])
def test_decode_table(text, expected):
    assert decode(text) == expected


@FEW
@given(st.text(max_size=80))
def test_decode_never_raises(text):
    g = decode(text)
    assert g is None or to_grid([list(r) for r in g], "decoded") == g


# -- tasks -----------------------------------------------------------------------------------------

def test_load_real_training_subset_with_solutions():
    chal, sol = arc_files("train")
    tasks = load_tasks(chal, sol)
    assert len(tasks) == 12 and [t.task_id for t in tasks] == sorted(t.task_id for t in tasks)
    for t in tasks:
        assert t.context_id == "arc-" + t.task_id and t.title == t.task_id
        assert len(t.test_outputs) == len(t.test_inputs) >= 1 and len(t.train) >= 2
        assert from_json(json.loads(json.dumps(to_json(t)))) == t
    assert len(load_tasks(chal, sol, task_ids=["6150a2bd", "44f52bb0"])) == 2
    assert [t.task_id for t in load_tasks(chal, sol, offset=2, limit=3)] == [t.task_id for t in tasks[2:5]]


def test_load_real_eval_subset_without_solutions():
    chal, _ = arc_files("eval")
    tasks = load_tasks(chal)
    assert len(tasks) == 10 and all(t.test_outputs is None for t in tasks)
    assert all(from_json(to_json(t)) == t for t in tasks)


def write(tmp_path, name, obj) -> Path:
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


OK_TASK = {"train": [{"input": [[1]], "output": [[2]]}, {"input": [[3]], "output": [[4]]}], "test": [{"input": [[5]]}]}


@pytest.mark.parametrize("challenges,solutions,kwargs,needles", [
    ({"t1": OK_TASK}, {}, {}, ["task t1", "no solution"]),
    ({"t1": OK_TASK}, {"t1": [[[1]], [[2]]]}, {}, ["task t1", "list of 1 grid"]),
    ({"t1": OK_TASK}, {"t1": [[[1, 2], [3]]]}, {}, ["task t1: test[0].output", "row 1 has 1 cells"]),
    ({"t1": {**OK_TASK, "train": [{"input": [[1]], "output": [[2, 3], [4]]}]}}, None, {},
     ["task t1: train[0].output", "row 1 has 1 cells, row 0 has 2"]),
    ({"t1": {**OK_TASK, "train": [{"input": [[1]]}]}}, None, {}, ["task t1: train[0].output"]),
    ({"t1": {**OK_TASK, "test": []}}, None, {}, ["task t1: test", "non-empty list"]),
    ({"t1": {**OK_TASK, "test": [{"input": [[11]]}]}}, None, {}, ["task t1: test[0].input", "cell 0 is 11"]),
    ({"t1": [1, 2]}, None, {}, ["task t1", "expected an object"]),
    ({"t1": OK_TASK}, None, {"task_ids": ["t1", "zz", "yy"]}, ["['yy', 'zz']"]),
    ([OK_TASK], None, {}, ["expected an object mapping task ids"]),
    ("{not json", None, {}, ["not valid JSON"]),
])
def test_load_errors_name_task_and_field(tmp_path, challenges, solutions, kwargs, needles):
    chal = write(tmp_path, "c.json", challenges)
    sol = None if solutions is None else write(tmp_path, "s.json", solutions)
    with pytest.raises(ArcDataError) as e:
        load_tasks(chal, sol, **kwargs)
    assert all(n in str(e.value) for n in needles), str(e.value)


def test_bad_task_outside_the_selection_is_not_read(tmp_path):
    chal = write(tmp_path, "c.json", {"a": OK_TASK, "b": {"train": "junk"}})
    assert [t.task_id for t in load_tasks(chal, task_ids=["a"])] == ["a"]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ArcDataError, match="nope_challenges.json does not exist"):
        load_tasks(tmp_path / "nope_challenges.json")
    with pytest.raises(ArcDataError, match="nope_solutions.json does not exist"):
        load_tasks(write(tmp_path, "c.json", {"t1": OK_TASK}), tmp_path / "nope_solutions.json")


@pytest.mark.parametrize("payload", [None, {}, {"task_id": "x", "train": [], "test": [{"input": [[1]]}]},
                                     {"task_id": "x", "train": OK_TASK["train"],
                                      "test": [{"input": [[1]], "output": [[1]]}, {"input": [[1]]}]}])
def test_from_json_refuses_corrupt_payloads(payload):
    with pytest.raises(ArcDataError):
        from_json(payload)


def test_synthetic_tasks_are_deterministic_small_and_follow_their_rule():
    tasks = synthetic_tasks(12, seed=0)
    assert tasks == synthetic_tasks(12, seed=0) and tasks != synthetic_tasks(12, seed=1)
    assert synthetic_tasks(24, seed=0)[:12] == tasks
    assert len({t.task_id for t in tasks}) == 12 and tasks[0].task_id == "syn-flip_h-000"
    for t in tasks:
        rule = t.task_id.split("-")[1]
        pairs = [*t.train, (t.test_inputs[0], t.test_outputs[0])]
        assert 3 <= len(t.train) <= 4 and len(t.test_inputs) == 1
        assert all(2 <= len(i) <= 4 and 2 <= len(i[0]) <= 4 and i != o for i, o in pairs)
        # colour rules: recover (a, b) from the demonstrations, then the test pair must follow
        changed = {(x, y) for i, o in t.train for ri, ro in zip(i, o) for x, y in zip(ri, ro) if x != y}
        a, b = min(changed) if changed else (0, 0)
        f = synthetic_rule(rule, a, b)
        assert all(f(i) == o for i, o in pairs), t.task_id


# -- test-time training ----------------------------------------------------------------------------

TASK = ArcTask("t", ((((1, 0),), ((0, 1),)), (((2, 0),), ((0, 2),)), (((3, 0),), ((0, 3),))),
               (((5, 0),),), (((0, 5),),))  # flip left-right


def test_prompt_and_target_format():
    demo = (((1, 2), (3, 4)), ((2, 1), (4, 3)))
    assert format_prompt([demo, demo], ((5, 6),)) == (
        "input:\n12\n34\noutput:\n21\n43\n\ninput:\n12\n34\noutput:\n21\n43\n\ninput:\n56\noutput:\n")
    assert format_target(((6, 5),)) == "65\n\n" and STOP == "\n\n"


@pytest.mark.parametrize("n_train,n_out,expected", [(2, 1, 2), (2, 2, 0), (3, 1, 3), (3, 2, 3), (4, 2, 6), (6, 2, 15)])
def test_leave_out_counts(n_train, n_out, expected):
    task = ArcTask("t", tuple((((k,),), ((k,),)) for k in range(n_train)), (((9,),),), None)
    tasks = leave_out_tasks(task, n_out)
    assert len(tasks) == expected
    for demos, qi, qo in tasks:
        assert len(demos) == n_train - n_out and (qi, qo) not in demos and (qi, qo) in task.train


@pytest.mark.parametrize("edit", [ALL_OFF, ALL_ON], ids=["plain", "all-augmentations"])
def test_ttt_examples_come_from_demonstrations_only_and_are_deterministic(edit):
    for task in synthetic_tasks(12, seed=3):
        data = ttt_examples(task, edit, seed=7, max_examples=0)
        assert data == ttt_examples(task, edit, seed=7, max_examples=0) and data.n_dropped == 0
        n = len(task.train)
        assert len(data.examples) == data.n_total >= n + n * (n - 1) // 2
        assert all(decode(target) is not None for _, target in data.examples)
        # other test grids, same examples: the test pair cannot leak into training
        other = replace(task, test_inputs=(((7,),),), test_outputs=(((8,),),))
        assert ttt_examples(other, edit, seed=7, max_examples=0) == data


def test_ttt_examples_hold_no_grid_shaped_like_the_test_output():
    # demonstrations are 2x2, the test output 1x7: no view of a 2x2 grid is 1x7, 7x1, 2x7, 2x14, ...
    task = ArcTask("s", tuple((((k, 1), (1, 1)), ((1, k), (1, 1))) for k in range(1, 5)), (((1, 2), (3, 4)),),
                   (((1, 2, 3, 4, 5, 6, 7),),))
    gold_shapes = {(len(g), len(g[0])) for t in [IDENTITY, *augmenters(True, True, True, True)]
                   for g in [t.apply(task.test_outputs[0])]}
    for prompt, target in ttt_examples(task, ALL_ON, seed=0, max_examples=0).examples:
        for block in (prompt + target).split("input:\n")[1:]:
            for grid_text in block.split("output:\n"):
                g = decode(grid_text)
                assert (len(g), len(g[0])) not in gold_shapes


def test_ttt_examples_cap_keeps_plain_first_and_reports_drops():
    task = synthetic_tasks(1)[0]
    full = ttt_examples(task, ALL_ON, seed=0, max_examples=0)
    capped = ttt_examples(task, ALL_ON, seed=0, max_examples=10)
    assert len(capped.examples) == 10 and capped.n_total == full.n_total
    assert capped.n_dropped == full.n_total - 10
    plain = ttt_examples(task, ALL_OFF, seed=0, max_examples=0).examples
    assert capped.examples[:len(plain)] == plain and set(capped.examples) <= set(full.examples)
    assert ttt_examples(task, ALL_ON, seed=1, max_examples=10) != capped


def test_prediction_queries_put_identity_first_and_invert():
    views = prediction_queries(TASK, [*BASIC, IDENTITY, *SIZE])
    assert [t.name for t, _ in views][:2] == ["identity", "rot90"] and len(views) == 1 + len(BASIC) + len(SIZE)
    assert views[0][1] == format_prompt(list(TASK.train), TASK.test_inputs[0])
    gold = TASK.test_outputs[0]
    for t, prompt in views:
        assert prompt.endswith(f"input:\n{encode(t.apply(TASK.test_inputs[0]))}\noutput:\n")
        assert invert_prediction(t, format_target(t.apply(gold)) + "junk") == gold
    assert invert_prediction(SIZE[0], "123\n456") is None and invert_prediction(FLIP_H, "no grid") is None


def test_prediction_queries_skip_views_that_would_exceed_30():
    big = ArcTask("big", ((((1,) * 20,) * 2, ((2,),)),), (((3,) * 20,),), None)
    names = [t.name for t, _ in prediction_queries(big, [FLIP_H, SIZE[0], SIZE[1]])]
    assert names == ["identity", "flip_h", "double_height"]


A, B, C = ((1,),), ((2,),), ((3,),)


@pytest.mark.parametrize("preds,expected", [
    ([A, B, B, None, A, B], [(B, 3), (A, 2)]),
    ([A, B, C, B, C], [(B, 2), (C, 2), (A, 1)]),   # ties: first appearance first
    ([C, A, B], [(C, 1), (A, 1), (B, 1)]),
    ([None, None], []), ([], []),
])
def test_vote_table(preds, expected):
    assert vote(preds) == expected


@FEW
@given(g=grids(max_side=3, colours=3), others=st.lists(grids(max_side=3, colours=3), max_size=6),
       extra=st.integers(1, 3), seed=st.randoms(use_true_random=False))
def test_vote_majority_wins(g, others, extra, seed):
    top = max([others.count(o) for o in others if o != g], default=0) + extra
    preds = [o for o in others if o != g] + [g] * top + [None]
    seed.shuffle(preds)
    ranked = vote(preds)
    assert ranked[0] == (g, top) and pass_at_2(ranked, g)
    assert vote(preds) == ranked and sum(c for _, c in ranked) == len(preds) - 1


@pytest.mark.parametrize("ranked,gold,ok", [([(A, 3), (B, 2), (C, 1)], B, True), ([(A, 3), (B, 2), (C, 1)], C, False),
                                            ([(A, 1)], A, True), ([], A, False)])
def test_pass_at_2(ranked, gold, ok):
    assert pass_at_2(ranked, gold) is ok
