"""Test-time training (TTT) data and voting for one ARC task: pure text in, text out.

What the LM sees (kept compact for small models on CPU)::

    input:
    012
    340
    output:
    11
    22

    input:
    <query>
    output:

and it is trained to continue with `format_target`: the grid, then an empty line. Demonstration
blocks end the same way, so the model learns to stop there; ``STOP`` is that stop string, and
`decode` ignores anything after it anyway.

Training data (`ttt_examples`) is built from the demonstrations only, never from a test output:
leave-one-out and leave-two-out tasks, each also under every geometric transform the edit enables.
The transformed copies also get a seeded colour permutation and demonstration order; the
untransformed copies keep the task's own colours, since some tasks name a colour outright.

Prediction (`prediction_queries`, `invert_prediction`, `vote`) asks for the test output under
several transforms, maps each answer back, and ranks the distinct answers by votes; scoring is
pass@2 (the gold grid is one of the top two).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from itertools import combinations

from core.arc.augment import (IDENTITY, Transform, apply_to_pairs, augmenters, colour_transform, compose, pairs_fit,
                              random_colour_perm, random_order, reorder)
from core.arc.grids import Grid, decode, encode
from core.arc.schema import ArcEdit
from core.arc.tasks import ArcTask

STOP = "\n\n"
Pair = tuple[Grid, Grid]


def format_prompt(demos: list[Pair], query: Grid) -> str:
    blocks = [f"input:\n{encode(i)}\noutput:\n{encode(o)}\n" for i, o in demos]
    return "\n".join([*blocks, f"input:\n{encode(query)}\noutput:\n"])


def format_target(grid: Grid) -> str:
    return encode(grid) + STOP


@dataclass(frozen=True)
class TTTData:
    """The (prompt, target) examples of one task's test-time training."""

    examples: tuple[tuple[str, str], ...]
    """At most ``max_examples``: every untransformed example first, then a seeded sample of the
    transformed ones."""
    n_total: int
    """Distinct examples built before the cap (exact duplicates, e.g. a flip of a symmetric task,
    are counted once)."""
    n_dropped: int
    """``n_total - len(examples)``."""


def leave_out_tasks(task: ArcTask, n_out: int) -> list[tuple[list[Pair], Grid, Grid]]:
    """(demos, query input, query output) for every choice of ``n_out`` held-out demonstrations.

    Of the held-out pairs (in index order) the first is the query and the others are simply dropped:
    leave-two-out is a leave-one-out task with one demonstration fewer. A choice that would leave no
    demonstration is skipped, so a task with 2 demonstrations has no leave-two-out tasks.
    """
    n = len(task.train)
    out = []
    for held in combinations(range(n), n_out):
        demos = [p for k, p in enumerate(task.train) if k not in held]
        if demos:
            out.append((demos, *task.train[held[0]]))
    return out


def ttt_examples(task: ArcTask, edit: ArcEdit, *, seed: int, max_examples: int) -> TTTData:
    """Leave-one-out and leave-two-out examples, also under the edit's transforms; deterministic
    for ``seed``. ``max_examples`` = 0 means no cap. A transform under which some grid of a
    leave-out task would exceed 30x30 skips that task."""
    rng = random.Random(seed)
    base = leave_out_tasks(task, 1) + leave_out_tasks(task, 2)
    plain = [(format_prompt(d, qi), format_target(qo)) for d, qi, qo in base]
    transformed = []
    views = augmenters(edit.use_basic_augmentations, edit.use_size_augmentations,
                       edit.use_chain_augmentations, edit.use_repeat_augmentations)
    for t in views:
        for demos, qi, qo in base:
            if not pairs_fit([*demos, (qi, qo)], t):
                continue
            view = compose(t, colour_transform(random_colour_perm(rng)))
            shown = reorder(apply_to_pairs(demos, view), random_order(len(demos), rng))
            transformed.append((format_prompt(shown, view.apply(qi)), format_target(view.apply(qo))))
    plain = list(dict.fromkeys(plain))
    seen = set(plain)
    transformed = [e for e in dict.fromkeys(transformed) if e not in seen]
    n_total = len(plain) + len(transformed)
    if max_examples and n_total > max_examples:
        plain = plain[:max_examples]
        keep = sorted(rng.sample(range(len(transformed)), max_examples - len(plain)))
        transformed = [transformed[k] for k in keep]
    examples = (*plain, *transformed)
    return TTTData(examples, n_total, n_total - len(examples))


def prediction_queries(task: ArcTask, transforms: list[Transform], test_index: int = 0) -> list[tuple[Transform, str]]:
    """(transform, prompt) asking for test output ``test_index`` of the task seen under each
    transform. Identity always comes first (added if missing), so it wins ties in `vote`; a
    transform under which some grid would exceed 30x30 is left out."""
    query = task.test_inputs[test_index]
    views = [IDENTITY, *(t for t in transforms if t.name != IDENTITY.name)]
    return [(t, format_prompt(apply_to_pairs(task.train, t), t.apply(query)))
            for t in views if pairs_fit(task.train, t) and t.fits(query)]


def invert_prediction(transform: Transform, text: str) -> Grid | None:
    """The model's answer under ``transform`` mapped back, or None if it is no grid or not in the
    transform's image (e.g. an odd-sized answer under upscaling)."""
    grid = decode(text)
    if grid is None:
        return None
    try:
        return transform.invert(grid)
    except ValueError:
        return None


def vote(predictions: list[Grid | None]) -> list[tuple[Grid, int]]:
    """Distinct grids with their counts, most votes first; equal counts keep the order of first
    appearance (so the identity view, asked first, wins ties). None is no vote."""
    counts = Counter(p for p in predictions if p is not None)  # Counter keeps first-appearance order
    return sorted(counts.items(), key=lambda kv: -kv[1])  # stable sort


def pass_at_2(ranked: list[tuple[Grid, int]], gold: Grid) -> bool:
    return any(g == gold for g, _ in ranked[:2])
