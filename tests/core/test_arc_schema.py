"""The teacher's ARC edit: a table of edit texts and what the parser makes of each."""

import json
from dataclasses import replace

import pytest

from core.arc.schema import ArcEdit, EditError, EditLimits, check_budget, parse_edit

GOOD = {"use_basic_augmentations": True, "use_size_augmentations": False, "use_chain_augmentations": False,
        "use_repeat_augmentations": True, "strategy": "train_using_output_tokens", "learning_rate": 1e-4,
        "num_train_epochs": 3}
EDIT = ArcEdit(True, False, False, True, "train_using_output_tokens", 1e-4, 3)
CLIP, REJECT = EditLimits(), EditLimits(out_of_range="reject")


def js(**changes) -> str:
    """GOOD with keys changed (value None deletes the key), as JSON text."""
    d = {**GOOD, **changes}
    return json.dumps({k: v for k, v in d.items() if v is not None})


def raw(key: str, literal: str) -> str:
    """GOOD with one value replaced by a raw JSON (or not-JSON) literal."""
    return js(**{key: "@@"}).replace('"@@"', literal)


@pytest.mark.parametrize("text,limits,expected,notes", [
    (js(), CLIP, EDIT, ()),
    ("Here is my edit:\n```json\n" + js() + "\n```\nThat should work.", CLIP, EDIT, ()),
    ("I'll use {braces} in prose first. " + js(), CLIP, EDIT, ()),                 # a non-JSON '{' is skipped
    (js() + " and a second " + js(num_train_epochs=9), CLIP, EDIT, ()),           # the first object wins
    (js(learning_rate=1), CLIP, replace(EDIT, learning_rate=1e-2), ("learning_rate 1 clipped to 0.01",)),
    (js(learning_rate=0), CLIP, replace(EDIT, learning_rate=1e-6), ("learning_rate 0 clipped to 1e-06",)),
    (js(num_train_epochs=50), CLIP, replace(EDIT, num_train_epochs=10), ("num_train_epochs 50 clipped to 10",)),
    (js(num_train_epochs=10**14), CLIP, replace(EDIT, num_train_epochs=10), ("num_train_epochs 1e+14 clipped to 10",)),
    (raw("num_train_epochs", "1" + "0" * 400), CLIP, replace(EDIT, num_train_epochs=10),
     ("num_train_epochs huge clipped to 10",)),                                    # JSON ints are unbounded
    (js(num_train_epochs=0, learning_rate=-1.0), CLIP, replace(EDIT, learning_rate=1e-6, num_train_epochs=1),
     ("learning_rate -1 clipped to 1e-06", "num_train_epochs 0 clipped to 1")),
    (js(strategy="train_using_all_tokens", learning_rate=1e-2, num_train_epochs=10), REJECT,
     replace(EDIT, strategy="train_using_all_tokens", learning_rate=1e-2, num_train_epochs=10), ()),  # inclusive bounds
])
def test_good_edits(text, limits, expected, notes):
    assert parse_edit(text, limits) == (expected, notes)


@pytest.mark.parametrize("text,limits,reason", [
    ("", CLIP, "no_json"),
    ("use basic augmentations and lr 1e-4", CLIP, "no_json"),
    (js()[:-20], CLIP, "bad_json"),                                                  # truncated
    (js()[:-1], CLIP, "bad_json"),
    (str(GOOD), CLIP, "bad_json"),                                                   # a Python dict literal
    ("{'use_basic_augmentations': True}", CLIP, "bad_json"),
    ("__import__('os').system('x')", CLIP, "no_json"),
    (raw("learning_rate", "__import__('os').system('x')"), CLIP, "bad_json"),
    ('{"__class__": {"__init__": 1}}', CLIP, "missing_keys"),
    (js(num_train_epochs=None), CLIP, "missing_keys"),
    ("{}", CLIP, "missing_keys"),
    (js(batch_size=8), CLIP, "unknown_keys"),
    (js()[:-1] + ', "learning_rate": 0.5}', CLIP, "duplicate_keys"),
    (js(use_basic_augmentations=1), CLIP, "bad_type"),
    (js(use_size_augmentations="true"), CLIP, "bad_type"),
    (raw("use_chain_augmentations", "null"), CLIP, "bad_type"),
    (js(num_train_epochs=3.5), CLIP, "bad_type"),
    (js(num_train_epochs=3.0), CLIP, "bad_type"),
    (js(num_train_epochs=True), CLIP, "bad_type"),
    (js(num_train_epochs="3"), CLIP, "bad_type"),
    (js(learning_rate="1e-4"), CLIP, "bad_type"),
    (js(learning_rate=True), CLIP, "bad_type"),
    (js(strategy=1), CLIP, "bad_type"),
    (js(strategy="train_on_everything"), CLIP, "bad_value"),
    (raw("learning_rate", "NaN"), CLIP, "non_finite"),
    (raw("learning_rate", "Infinity"), CLIP, "non_finite"),
    (raw("learning_rate", "-Infinity"), CLIP, "non_finite"),
    (raw("learning_rate", "1e400"), CLIP, "non_finite"),                             # overflows to inf
    (raw("learning_rate", "1" + "0" * 400), CLIP, "non_finite"),                     # an int too big for a float
    (js(num_train_epochs=50), REJECT, "out_of_range"),
    (js(num_train_epochs=0), REJECT, "out_of_range"),
    (js(learning_rate=0.5), REJECT, "out_of_range"),
    (js(learning_rate=1e-9), REJECT, "out_of_range"),
    ("{" * 100_000, CLIP, "bad_json"),
    ('{"a": ' * 3000, CLIP, "bad_json"),                                             # deep nesting is not a crash
])
def test_bad_edits(text, limits, reason):
    with pytest.raises(EditError) as e:
        parse_edit(text, limits)
    assert e.value.reason == reason and str(e.value).startswith(reason)


def test_unknown_out_of_range_mode_is_a_config_error():
    with pytest.raises(ValueError, match="out_of_range"):
        parse_edit(js(), EditLimits(out_of_range="wrap"))


@pytest.mark.parametrize("n,epochs,batch,max_steps,ok", [
    (10, 3, 4, 9, True),     # ceil(10/4)=3 steps x 3 epochs = 9
    (10, 3, 4, 8, False),
    (8, 3, 4, 6, True),
    (1000, 10, 1, 0, True),  # 0 = no budget
    (0, 5, 4, 1, True),
])
def test_budget(n, epochs, batch, max_steps, ok):
    if ok:
        check_budget(n, epochs, batch, max_steps)
    else:
        with pytest.raises(EditError) as e:
            check_budget(n, epochs, batch, max_steps)
        assert e.value.reason == "budget"


def test_unknown_keys_can_be_ignored_with_a_note():
    edit, notes = parse_edit(js(batch_size=8, num_epochs=2), EditLimits(unknown_keys="ignore"))
    assert edit == parse_edit(js(), EditLimits())[0]
    assert notes == ("ignored unknown keys ['batch_size', 'num_epochs']",)
    with pytest.raises(ValueError, match="unknown_keys"):
        parse_edit(js(), EditLimits(unknown_keys="drop"))
