"""The teacher's self-edit for an ARC task: a JSON choice of augmentations and hyper-parameters.

As in SEAL's few-shot ARC, the teacher writes one JSON object with exactly these keys::

    {"use_basic_augmentations": true, "use_size_augmentations": false,
     "use_chain_augmentations": false, "use_repeat_augmentations": true,
     "strategy": "train_using_output_tokens", "learning_rate": 1e-4, "num_train_epochs": 3}

The text is untrusted model output. It is only ever read with `json` (never eval), and it is
checked strictly: a wrong type is a rejected edit, not something to coerce, since the teacher is
trained on which edits earn rewards and a lenient parser would reward sloppy JSON. Values out of
range are the one exception: depending on `EditLimits.out_of_range` they are clipped (and the
clipping is reported in the notes `parse_edit` returns) or rejected.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from core.config import Choice


class Strategy(Choice):
    """Where the test-time-training loss goes: the whole prompt, or the target grid only."""

    train_using_all_tokens = "train_using_all_tokens"
    train_using_output_tokens = "train_using_output_tokens"


class OutOfRange(Choice):
    clip = "clip"
    reject = "reject"


class UnknownKeys(Choice):
    reject = "reject"
    ignore = "ignore"


STRATEGIES = tuple(s.value for s in Strategy)
BOOL_KEYS = ("use_basic_augmentations", "use_size_augmentations", "use_chain_augmentations",
             "use_repeat_augmentations")
KEYS = (*BOOL_KEYS, "strategy", "learning_rate", "num_train_epochs")


@dataclass(frozen=True)
class ArcEdit:
    """A parsed, in-range self-edit."""

    use_basic_augmentations: bool
    """Train also on the task under rotations, flips and transposes."""
    use_size_augmentations: bool
    """... under upscaling by 2 (cells become 2x2, 2x1 or 1x2 blocks)."""
    use_chain_augmentations: bool
    """... under a rotation/flip/transpose followed by upscaling."""
    use_repeat_augmentations: bool
    """... under tiling the grids twice down, across or both."""
    strategy: str
    """'train_using_all_tokens' (loss on the whole prompt) or 'train_using_output_tokens' (loss on
    the target grid only)."""
    learning_rate: float
    """LoRA learning rate."""
    num_train_epochs: int
    """Passes over the test-time-training examples."""


@dataclass
class EditLimits:
    """What the student accepts from an edit (a config node: plain types and enums only)."""

    learning_rate_min: float = 1e-6
    """Smallest learning rate accepted."""
    learning_rate_max: float = 1e-2
    """Largest learning rate accepted."""
    max_epochs: int = 10
    """Most epochs accepted; at least 1 is always required."""
    out_of_range: OutOfRange = OutOfRange.clip
    """'clip' a learning rate or epoch count out of range to the nearest bound (and note it), or
    'reject' the edit with reason 'out_of_range'."""
    unknown_keys: UnknownKeys = UnknownKeys.reject
    """'reject' an edit with keys outside the schema (reason 'unknown_keys'), or 'ignore' them (and
    note it): small teachers tend to append made-up keys to an otherwise valid edit."""
    max_steps: int = 200
    """Optimizer-step budget of one adaptation, ceil(examples / batch) * epochs; 0 = no budget."""


class EditError(ValueError):
    """A self-edit the student will not run. ``reason`` is a short machine-readable tag:
    no_json, bad_json, duplicate_keys, missing_keys, unknown_keys, bad_type, bad_value, non_finite,
    out_of_range, budget."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def parse_edit(text: str, limits: EditLimits) -> tuple[ArcEdit, tuple[str, ...]]:
    """(edit, notes) from the first JSON object in ``text``; raises EditError.

    Prose or markdown fences around the object are allowed. ``notes`` says what was clipped
    (e.g. "num_train_epochs 50 clipped to 10"); it is empty when nothing was.
    """
    return edit_from_object(first_json_object(text), limits)


def first_json_object(text: str) -> dict:
    """The first ``{...}`` in ``text`` that decodes as a JSON object.

    Tries each '{' in turn, so braces in prose before the object do no harm. NaN and Infinity are
    decoded (Python's json accepts them) and rejected later as non-finite, for a clearer reason.
    """
    if not isinstance(text, str) or "{" not in text:
        raise EditError("no_json", "the edit holds no JSON object")
    decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates)
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = decoder.raw_decode(text, start)
            return obj
        except _Duplicate as e:
            raise EditError("duplicate_keys", f"key {e.args[0]!r} appears twice") from None
        except (ValueError, RecursionError):
            start = text.find("{", start + 1)
    raise EditError("bad_json", f"no complete JSON object (truncated, or not JSON): {text.strip()!r:.80}")


class _Duplicate(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    # json keeps the last of duplicate keys silently; an edit that says two things is not one edit
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _Duplicate(k)
        out[k] = v
    return out


def edit_from_object(obj: dict, limits: EditLimits) -> tuple[ArcEdit, tuple[str, ...]]:
    """Check a decoded object's keys, types and ranges; see `parse_edit`."""
    if limits.out_of_range not in ("clip", "reject"):
        raise ValueError(f"out_of_range={limits.out_of_range!r}; use 'clip' or 'reject'")
    missing = [k for k in KEYS if k not in obj]
    if missing:
        raise EditError("missing_keys", f"missing {missing}")
    if limits.unknown_keys not in ("reject", "ignore"):
        raise ValueError(f"unknown_keys={limits.unknown_keys!r}; use 'reject' or 'ignore'")
    notes: list[str] = []
    unknown = sorted(k for k in obj if k not in KEYS)
    if unknown and limits.unknown_keys == "reject":
        raise EditError("unknown_keys", f"unknown {unknown}; the keys are {list(KEYS)}")
    if unknown:
        notes.append(f"ignored unknown keys {unknown}")
    for k in BOOL_KEYS:
        if type(obj[k]) is not bool:  # not 0/1, not "true"
            raise EditError("bad_type", f"{k} must be true or false, got {obj[k]!r:.40}")
    if not isinstance(obj["strategy"], str):
        raise EditError("bad_type", f"strategy must be a string, got {obj['strategy']!r:.40}")
    if obj["strategy"] not in STRATEGIES:
        raise EditError("bad_value", f"strategy must be one of {list(STRATEGIES)}, got {obj['strategy']!r:.40}")
    lr, epochs = obj["learning_rate"], obj["num_train_epochs"]
    if type(lr) not in (int, float):  # excludes bool
        raise EditError("bad_type", f"learning_rate must be a number, got {lr!r:.40}")
    if type(epochs) is not int:  # excludes bool and 3.0
        raise EditError("bad_type", f"num_train_epochs must be an integer, got {epochs!r:.40}")
    try:
        lr = float(lr)  # an int of 400 digits overflows here, and is no finite rate either
    except OverflowError:
        lr = math.inf
    if not math.isfinite(lr):
        raise EditError("non_finite", f"learning_rate is {lr}")
    lr = _in_range("learning_rate", lr, limits.learning_rate_min, limits.learning_rate_max, limits, notes)
    epochs = _in_range("num_train_epochs", epochs, 1, limits.max_epochs, limits, notes)
    edit = ArcEdit(*(obj[k] for k in BOOL_KEYS), strategy=obj["strategy"], learning_rate=float(lr),
                   num_train_epochs=epochs)
    return edit, tuple(notes)


def _in_range(key: str, value, lo, hi, limits: EditLimits, notes: list[str]):
    if lo <= value <= hi:
        return value
    if limits.out_of_range == "reject":
        raise EditError("out_of_range", f"{key} {_show(value)} is outside [{lo}, {hi}]")
    clipped = min(max(value, lo), hi)
    notes.append(f"{key} {_show(value)} clipped to {clipped}")
    return clipped


def _show(value) -> str:
    # JSON ints are unbounded: '{:.3g}' of a 400-digit epoch count would overflow
    return f"{value:.3g}" if abs(value) < 1e15 else ("huge" if value > 0 else "-huge")


def check_budget(n_examples: int, epochs: int, batch_size: int, max_steps: int) -> None:
    """Raise EditError('budget') if the adaptation would take more than ``max_steps`` optimizer
    steps (0 = no budget)."""
    steps = -(-n_examples // batch_size) * epochs
    if max_steps and steps > max_steps:
        raise EditError("budget", f"{steps} steps (ceil({n_examples} / {batch_size}) x {epochs} epochs) "
                                  f"exceed the budget of {max_steps}")
