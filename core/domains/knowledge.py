"""Knowledge incorporation (SEAL's first domain): a passage and questions about it.

The self-edit is text to train on (split into items per `sequences.edit_to_sequences`, the passage
appended); the student then answers each question with the passage removed from its prompt, one
line each, graded by the configured grader (token F1 by default).
"""

from __future__ import annotations

from core.contexts import Context, context_from_json, context_to_json
from core.domains.sequences import edit_to_sequences
from core.domains.spec import Decode, Query, TrainSpec
from core.records import Condition, QuestionVerdict

NAME = "knowledge"
REFERENCE = ("base", "passage")
DEFAULT_PROMPT = "implications"
DECODE = Decode(style="question", stop="line")
GRADER = None  # the student's configured grader (student.grader)
to_json, from_json = context_to_json, context_from_json


def load(data) -> list[Context]:
    from core.contexts import load_contexts

    return load_contexts(data.source, split=data.split, shuffle_seed=data.shuffle_seed, offset=data.offset,
                         limit=data.limit)


def edit_choices() -> None:
    """Free text: there is no finite set of edits to constrain the teacher to."""
    return None


def prompt_fields(ctx: Context) -> tuple[str, str]:
    return ctx.title, ctx.context


def train_spec(ctx: Context, edit: str, condition: str, student_cfg) -> TrainSpec:
    """The edit's items (titled) plus the passage; condition 'passage' trains on the passage alone."""
    train = student_cfg.train
    copies = 1 if condition == Condition.passage else train.passage_copies
    seqs = edit_to_sequences(ctx.title, ctx.context, edit, passage_copies=copies, max_sequences=train.max_sequences)
    return TrainSpec(sequences=seqs.sequences, info={"n_items": seqs.n_items, "n_dropped": seqs.n_dropped})


def queries(ctx: Context, student_cfg) -> list[Query]:
    return [Query(q.question, q.answer, student_cfg.answer.max_new_tokens) for q in ctx.questions]


def score(ctx: Context, qs: list[Query], answers: list[str], grade) -> list[QuestionVerdict]:
    scores = grade([(q.text, q.gold, a) for q, a in zip(qs, answers, strict=True)])
    return [QuestionVerdict(q.text, q.gold, a, s) for q, a, s in zip(qs, answers, scores)]
