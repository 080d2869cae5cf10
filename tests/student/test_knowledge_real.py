"""Knowledge incorporation happens on a real packaged model (SmolLM2-135M-Instruct).

One built-in fictional passage (no model can know its answers from pretraining) and an edit that
restates its facts in other words: after LoRA training on the edit, accuracy on the passage's
questions rises by at least 40 points over the unadapted baseline. The edit shares no 4-word
sequence with the questions (asserted), so the student cannot pass by memorising question text.
"""

import json
import re
from pathlib import Path

import pytest

from core.contexts import load_contexts
from core.jobs import StudentJob
from student.config import StudentConfig
from student.graders import contains, token_f1
from student.model import Student
from student.scoring import Baselines, adapt_and_score, make_grader

# More passes than the default recipe (3): one 9-sentence edit is a small dataset, and this test
# asks whether the facts get in at all, not which recipe is best (bench/sweep_recipe.py does that).
EPOCHS = 10
EDIT = json.loads((Path(__file__).parent / "fictional_edit.json").read_text())


def four_grams(text: str) -> set[tuple[str, ...]]:
    words = [re.sub(r"[^a-z0-9]", "", w) for w in text.lower().split()]
    words = [w for w in words if w]
    return {tuple(words[i:i + 4]) for i in range(len(words) - 3)}


@pytest.fixture(scope="module")
def ctx():
    c = load_contexts("demo", limit=1)[0]
    assert c.title == EDIT["title"]
    return c


def test_edit_shares_no_four_gram_with_questions(ctx):
    edit_grams = four_grams(" ".join(EDIT["edit"]))
    for q in ctx.questions:
        assert not edit_grams & four_grams(q.question), q.question


def test_restatement_edit_lifts_accuracy_by_40_points(ctx):
    cfg = StudentConfig(model="smollm2-135m-instruct")
    cfg.train.epochs = EPOCHS
    st = Student(cfg)
    base = Baselines(st, make_grader("contains"))
    r = adapt_and_score(st, base, "knowledge", StudentJob("knowledge", "edit", (ctx,), ("\n".join(EDIT["edit"]),)))
    f1_before = sum(token_f1(v.answer, v.gold) for v in base.get(ctx)[0]) / len(ctx.questions)
    f1_after = sum(token_f1(v.answer, v.gold) for v in r.verdicts) / len(ctx.questions)
    report = [(v.question, v.gold, v.answer) for v in r.verdicts]
    print(f"containment {r.baseline_score:.2f} -> {r.score:.2f}; token F1 {f1_before:.2f} -> {f1_after:.2f}")
    assert r.score - r.baseline_score >= 0.40, report
    assert all(contains(v.answer, v.gold) == v.score for v in r.verdicts)
