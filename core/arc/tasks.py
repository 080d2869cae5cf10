"""ARC tasks: loading the Kaggle ARC Prize 2024 files, a JSON form for queue payloads, and a small
synthetic set of our own.

Kaggle format: ``*_challenges.json`` maps a task id to ``{"train": [{"input", "output"}],
"test": [{"input"}]}``; ``*_solutions.json`` maps a task id to the list of test output grids. Only
the tasks selected are validated, and every error names the task id and the field.

The synthetic tasks exist because real ARC tasks are far beyond the 135M-270M models a CPU run can
adapt: each applies one simple rule (a flip, a transpose, a recolouring) to tiny grids, so a
small model fine-tuned for a few steps solves some of them and rewards are not all zero.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.arc.augment import FLIP_H, FLIP_V, ROT180, TRANSPOSE
from core.arc.grids import ArcDataError, Grid, to_grid
from core.runs import read_json

ID_PREFIX = "arc-"  # an ARC task's context id is this + its task id (edits files name tasks by task id)


@dataclass(frozen=True)
class ArcTask:
    """One ARC task: demonstration pairs and test inputs (with their outputs when known)."""

    task_id: str
    """The Kaggle id ('007bbfcc') or a synthetic one ('syn-flip_h-000')."""
    train: tuple[tuple[Grid, Grid], ...]
    """Demonstration (input, output) pairs."""
    test_inputs: tuple[Grid, ...]
    """Inputs whose outputs are to be predicted."""
    test_outputs: tuple[Grid, ...] | None
    """The gold outputs, one per test input; None when no solutions file was given."""

    @property
    def context_id(self) -> str:
        """Stable id of the task as a SEAL context (keys edits, results and resume)."""
        return ID_PREFIX + self.task_id

    @property
    def title(self) -> str:
        return self.task_id


def to_json(task: ArcTask) -> dict:
    """Plain JSON in the Kaggle task shape (lists, not tuples) for queue payloads; each test item
    carries its "output" when it is known. `from_json` reverses it."""
    test = [{"input": _lists(g)} for g in task.test_inputs]
    for item, out in zip(test, task.test_outputs or ()):
        item["output"] = _lists(out)
    return {"task_id": task.task_id,
            "train": [{"input": _lists(i), "output": _lists(o)} for i, o in task.train], "test": test}


def from_json(raw: dict) -> ArcTask:
    """The task `to_json` wrote; grids are validated, so a corrupt payload fails here, by name."""
    tid = raw.get("task_id") if isinstance(raw, dict) else None
    if not isinstance(tid, str):
        raise ArcDataError(f"an ARC task payload needs a string 'task_id', got {raw!r:.80}")
    test = _objects(raw.get("test"), f"task {tid}: test")
    has_output = ["output" in t for t in test]
    if any(has_output) and not all(has_output):
        raise ArcDataError(f"task {tid}: test: either every item has an 'output' or none does")
    outputs = [t["output"] for t in test] if all(has_output) else None
    return _parse(tid, raw.get("train"), [t.get("input") for t in test], outputs)


def load_tasks(challenges: str | Path, solutions: str | Path | None = None, *, task_ids: list[str] | None = None,
               offset: int = 0, limit: int | None = None) -> list[ArcTask]:
    """Tasks of a Kaggle challenges file (and its solutions), in sorted task-id order.

    ``task_ids`` picks tasks (still returned in sorted order); ``offset``/``limit`` then slice.
    With a solutions file every selected task must have one output per test input.
    """
    chal = _read_json(challenges)
    sols = None if solutions is None else _read_json(solutions)
    ids = sorted(chal)
    if task_ids is not None:
        unknown = sorted(set(task_ids) - set(chal))
        if unknown:
            raise ArcDataError(f"{challenges} has no task(s) {unknown[:10]} ({len(unknown)} of the "
                               f"{len(set(task_ids))} asked for)")
        ids = sorted(set(task_ids))
    tasks = []
    for tid in ids[offset:None if limit is None else offset + limit]:
        raw = chal[tid]
        if not isinstance(raw, dict):
            raise ArcDataError(f"task {tid}: expected an object with 'train' and 'test', got {type(raw).__name__}")
        test = _objects(raw.get("test"), f"task {tid}: test")
        outputs = None
        if sols is not None:
            if tid not in sols:
                raise ArcDataError(f"task {tid}: no solution in {solutions}")
            outputs = sols[tid]
        tasks.append(_parse(tid, raw.get("train"), [t.get("input") for t in test], outputs))
    return tasks


def _parse(tid: str, train: object, test_inputs: list, outputs: object | None) -> ArcTask:
    where = f"task {tid}"
    pairs = tuple((to_grid(p.get("input"), f"{where}: train[{k}].input"),
                   to_grid(p.get("output"), f"{where}: train[{k}].output"))
                  for k, p in enumerate(_objects(train, f"{where}: train")))
    inputs = tuple(to_grid(g, f"{where}: test[{k}].input") for k, g in enumerate(test_inputs))
    if outputs is None:
        return ArcTask(tid, pairs, inputs, None)
    if not isinstance(outputs, list) or len(outputs) != len(inputs):
        raise ArcDataError(f"{where}: the solution must be a list of {len(inputs)} grid(s), one per test input; "
                           f"got {outputs!r:.60}")
    return ArcTask(tid, pairs, inputs, tuple(to_grid(g, f"{where}: test[{k}].output") for k, g in enumerate(outputs)))


def _objects(value: object, where: str) -> list[dict]:
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise ArcDataError(f"{where}: expected a non-empty list of objects, got {value!r:.60}")
    return value


def _read_json(path: str | Path) -> dict:
    p = Path(path)
    raw = read_json(p, ArcDataError, "ARC file {path} does not exist; give a Kaggle ARC Prize 2024 *_challenges.json "
                                     "(and optionally its *_solutions.json)")
    if not isinstance(raw, dict):
        raise ArcDataError(f"{p}: expected an object mapping task ids to tasks, got {type(raw).__name__}")
    return raw


def _lists(grid: Grid) -> list[list[int]]:
    return [list(row) for row in grid]


# -- synthetic tasks -------------------------------------------------------------------------------

SYNTHETIC_RULES = ("flip_h", "flip_v", "transpose", "rot180", "recolour", "colour_swap")
_GEOMETRIC = {"flip_h": FLIP_H, "flip_v": FLIP_V, "transpose": TRANSPOSE, "rot180": ROT180}


def synthetic_rule(rule: str, a: int = 0, b: int = 0) -> Callable[[Grid], Grid]:
    """The map of a synthetic rule; colours ``a``, ``b`` are for 'recolour' (a -> b) and 'colour_swap'."""
    if rule in _GEOMETRIC:
        return _GEOMETRIC[rule].forward
    if rule == "recolour":
        mapping = {a: b}
    elif rule == "colour_swap":
        mapping = {a: b, b: a}
    else:
        raise ValueError(f"unknown synthetic rule {rule!r}; use one of {list(SYNTHETIC_RULES)}")
    return lambda g: tuple(tuple(mapping.get(c, c) for c in row) for row in g)


def synthetic_tasks(n: int = 12, seed: int = 0) -> list[ArcTask]:
    """``n`` easy tasks cycling through SYNTHETIC_RULES, ids 'syn-<rule>-<index>'.

    Each task: 3-4 demonstrations and one test pair with its solution, grids 2x2..4x4 in the
    background plus 2-3 colours. Task i depends only on (seed, i), so n=24 extends n=12.
    """
    return [_synthetic_task(i, SYNTHETIC_RULES[i % len(SYNTHETIC_RULES)], random.Random(f"syn-{seed}-{i}"))
            for i in range(n)]


def _synthetic_task(index: int, rule: str, rng: random.Random) -> ArcTask:
    palette = rng.sample(range(1, 10), rng.choice((2, 3)))
    a = palette[0]
    b = palette[1] if rule == "colour_swap" else rng.choice([c for c in range(1, 10) if c not in palette])
    f = synthetic_rule(rule, a, b)
    n_pairs = rng.choice((3, 4)) + 1  # demonstrations + the test pair
    pairs: list[tuple[Grid, Grid]] = []
    while len(pairs) < n_pairs:
        h, w = rng.randint(2, 4), rng.randint(2, 4)
        g = tuple(tuple(rng.choice((0, *palette)) for _ in range(w)) for _ in range(h))
        # a pair the rule leaves unchanged shows nothing about the rule
        if f(g) != g and (g, f(g)) not in pairs:
            pairs.append((g, f(g)))
    *train, (test_in, test_out) = pairs
    return ArcTask(f"syn-{rule}-{index:03d}", tuple(train), (test_in,), (test_out,))
