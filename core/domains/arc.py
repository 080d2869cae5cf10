"""ARC (SEAL's few-shot domain): the context is a task's demonstrations, the self-edit a JSON choice
of augmentations and hyper-parameters for test-time training (TTT).

The edit is parsed strictly (`arc.schema.parse_edit`: first JSON object, never eval); one that does
not parse, is out of range under ``limits.out_of_range: reject``, or implies more optimizer steps
than ``limits.max_steps`` is not run: it scores 0 with its reason recorded. A valid edit becomes
leave-one/two-out (prompt, target) pairs from the demonstrations (`arc.ttt.ttt_examples`), loss on
the output grid or on every token per its ``strategy``, at its learning rate and epochs. The student
then predicts the test output under ``predict_transforms`` views of the task, each answer is mapped
back and voted on, and tau is pass@2 (1 if the solution is among the two most-voted grids).
The reference condition 'default_ttt' runs the fixed edit ``default_edit``.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.arc import augment, tasks, ttt
from core.arc.grids import encode, shape
from core.arc.schema import (BOOL_KEYS, KEYS, STRATEGIES, ArcEdit, EditError, EditLimits, Strategy, check_budget,
                             parse_edit)
from core.domains.spec import Decode, Query, TrainSpec
from core.records import Condition, QuestionVerdict

NAME = "arc"
REFERENCE = ("base", "default_ttt")
DEFAULT_PROMPT = "arc-config"
DECODE = Decode(style="raw", stop="blank")
GRADER = "pass@2"
SYNTHETIC = "synthetic"
to_json, from_json = tasks.to_json, tasks.from_json
LEARNING_RATES = (1e-4, 3e-4, 5e-4, 1e-3, 2e-3, 3e-3, 5e-3)
"""The learning rates a constrained teacher chooses among (``teacher.generation.constrain``)."""
EPOCHS = tuple(range(1, 11))
"""... and the epoch counts (the student's ``limits`` still clip or reject, and budget them)."""


def edit_choices() -> list[str]:
    """Every edit a constrained teacher may write: the schema's keys in order, each boolean and
    strategy, `LEARNING_RATES` x `EPOCHS` (2^4 x 2 x 7 x 10 = 2,240 JSON strings)."""
    out = []
    for *flags, strategy, lr, epochs in itertools.product(*[(True, False)] * len(BOOL_KEYS), STRATEGIES,
                                                          LEARNING_RATES, EPOCHS):
        out.append(json.dumps(dict(zip(KEYS, (*flags, strategy, lr, epochs)))))
    return out


@dataclass
class DefaultEdit:
    """The fixed TTT recipe of the 'default_ttt' condition (the edit schema's fields)."""

    use_basic_augmentations: bool = True
    """Train also on the task under rotations, flips and transposes."""
    use_size_augmentations: bool = False
    """... under upscaling by 2 (cells become 2x2, 2x1 or 1x2 blocks)."""
    use_chain_augmentations: bool = False
    """... under a rotation/flip/transpose followed by upscaling."""
    use_repeat_augmentations: bool = False
    """... under tiling the grids twice down, across or both."""
    strategy: Strategy = Strategy.train_using_output_tokens
    """Loss on the whole prompt ('train_using_all_tokens') or on the target grid only."""
    learning_rate: float = 1e-3
    """LoRA learning rate."""
    num_train_epochs: int = 2
    """Passes over the test-time-training examples."""


@dataclass
class ArcSettings:
    """How a student runs ARC edits (the ``arc:`` node of a student config)."""

    limits: EditLimits = field(default_factory=EditLimits)
    """What an edit may ask for: learning-rate range, epochs, the step budget, clip or reject."""
    default_edit: DefaultEdit = field(default_factory=DefaultEdit)
    """The edit of the 'default_ttt' reference condition."""
    max_examples: int = 24
    """Cap on TTT examples per adaptation (untransformed first); the count dropped is recorded."""
    predict_transforms: int = 4
    """Views of the task the test output is predicted under (identity, then rotations/flips);
    their inverted answers are voted on."""
    max_new_tokens: int = 512
    """Upper bound on an answer's tokens; each query gets about twice its largest grid's text."""


def load(data) -> list[tasks.ArcTask]:
    """'synthetic' (our own easy tasks; shuffle_seed seeds them) or a Kaggle challenges file, with
    ``data.solutions`` or, by default, the ``*_solutions*`` file beside it."""
    if data.source == SYNTHETIC:
        n = data.offset + (data.limit if data.limit is not None else 12)
        out = tasks.synthetic_tasks(n, seed=data.shuffle_seed or 0)
    else:
        sol = data.solutions
        if sol is None:
            guess = Path(data.source).with_name(Path(data.source).name.replace("challenges", "solutions"))
            sol = str(guess) if guess.is_file() and guess != Path(data.source) else None
        out = tasks.load_tasks(data.source, sol)
        if data.shuffle_seed is not None:
            import random

            random.Random(data.shuffle_seed).shuffle(out)
    end = None if data.limit is None else data.offset + data.limit
    return out[data.offset:end]


def prompt_fields(task: tasks.ArcTask) -> tuple[str, str]:
    """The teacher sees the demonstrations and the test input, as the student would."""
    return task.task_id, ttt.format_prompt(list(task.train), task.test_inputs[0])


def _edit(edit: str, condition: str, settings: ArcSettings) -> tuple[ArcEdit, tuple[str, ...]]:
    if condition == Condition.default_ttt:
        return ArcEdit(**asdict(settings.default_edit)), ()
    return parse_edit(edit, settings.limits)


def train_spec(task: tasks.ArcTask, edit: str, condition: str, student_cfg) -> TrainSpec:
    settings, batch = student_cfg.arc, student_cfg.train.batch_size
    try:
        e, notes = _edit(edit, condition, settings)
        data = ttt.ttt_examples(task, e, seed=student_cfg.train.seed, max_examples=settings.max_examples)
        if not data.examples:
            raise EditError("no_examples", "the task has no leave-out example under this edit")
        check_budget(len(data.examples), e.num_train_epochs, batch, settings.limits.max_steps)
    except EditError as err:
        return TrainSpec(invalid=str(err), info={"invalid": err.reason})
    info = {"edit": asdict(e), "notes": list(notes), "n_items": data.n_total, "n_dropped": data.n_dropped,
            "planned_steps": math.ceil(len(data.examples) / batch) * e.num_train_epochs}
    return TrainSpec(pairs=data.examples, prompt_loss=e.strategy == "train_using_all_tokens",
                     learning_rate=e.learning_rate, epochs=e.num_train_epochs, info=info)


def _views(task: tasks.ArcTask, student_cfg) -> list[tuple[int, augment.Transform, str]]:
    """(test index, transform, prompt) of every prediction, in a fixed order (identity first)."""
    transforms = list(augment.BASIC[:max(0, student_cfg.arc.predict_transforms - 1)])
    return [(i, t, p) for i in range(len(task.test_inputs)) for t, p in ttt.prediction_queries(task, transforms, i)]


def queries(task: tasks.ArcTask, student_cfg) -> list[Query]:
    # About two tokens per cell bounds a grid's text for tokenizers that split digits; the largest
    # grid of the task (under the view) bounds the answer. The stop rule usually ends it far sooner.
    largest = max(h * (w + 1) for p in task.train for g in p for h, w in [shape(g)])
    budget = min(student_cfg.arc.max_new_tokens, 2 * largest + 8)
    gold = task.test_outputs or ()
    return [Query(p, encode(gold[i]) if i < len(gold) else "", budget, tag=f"{i}/{t.name}")
            for i, t, p in _views(task, student_cfg)]


def score(task: tasks.ArcTask, qs: list[Query], answers: list[str], grade=None) -> list[QuestionVerdict]:
    """pass@2 per test input: answers mapped back through their view, voted, top two checked."""
    if task.test_outputs is None:
        raise ValueError(f"task {task.task_id} has no solutions; give data.solutions to score it")
    by_name = {t.name: t for t in (augment.IDENTITY, *augment.BASIC)}
    out = []
    for i, gold in enumerate(task.test_outputs):
        preds = [ttt.invert_prediction(by_name[q.tag.split("/", 1)[1]], a)
                 for q, a in zip(qs, answers, strict=True) if q.tag.split("/", 1)[0] == str(i)]
        ranked = ttt.vote(preds)
        shown = " || ".join(f"{encode(g).replace(chr(10), '/')} x{n}" for g, n in ranked[:2])
        out.append(QuestionVerdict(f"{task.task_id} test {i}", encode(gold), shown,
                                   1.0 if ttt.pass_at_2(ranked, gold) else 0.0))
    return out
