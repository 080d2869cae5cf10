"""The gold answer's log-likelihood (student.loglik) against an independent computation: the
model's own forward and log_softmax, one question at a time, with and without a trained adapter,
for a plain and a chat prompt; and the values every adaptation's verdicts carry."""

from __future__ import annotations

import pytest

from core.contexts import load_contexts
from core.domains.spec import Query
from student.loglik import loglik_many
from student.model import Student
from tests.student.test_model import tiny_cfg


@pytest.fixture(scope="module")
def ctx():
    return load_contexts("demo", limit=1)[0]


def by_hand(st, query: Query) -> float:
    """Mean log p(gold token | prompt, earlier gold tokens), from the full model's logits."""
    import torch

    prompt = st.tok(st.prompt(query.text), add_special_tokens=not st.chat)["input_ids"]
    gold = st.tok(("" if st.chat else " ") + query.gold.strip(), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + gold])
    with torch.no_grad():
        logp = torch.log_softmax(st.model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(gold)) / len(gold)


@pytest.mark.parametrize("chat", [False, True])
def test_loglik_equals_forward_and_log_softmax(tiny_model, tiny_chat_model, ctx, chat):
    st = Student(tiny_cfg(tiny_chat_model if chat else tiny_model))
    queries = [Query(q.question, q.answer, 4) for q in ctx.questions]
    base = [by_hand(st, q) for q in queries]
    assert loglik_many(st, [queries], [-1])[0] == pytest.approx(base, abs=1e-5)
    st.train_many([[f"{ctx.title}\n{ctx.context}"], [ctx.context[:80]]], [0, 1])
    for slot in (0, 1):
        with st._route([slot]):
            want = [by_hand(st, q) for q in queries]
        # both slots and the base in one batch: each row through its own adapter
        got = loglik_many(st, [queries, queries, queries], [slot, 1 - slot, -1])
        assert got[0] == pytest.approx(want, abs=1e-5)
        assert got[2] == pytest.approx(base, abs=1e-5)
    assert got[0] != pytest.approx(base, abs=1e-3)  # the adapter is in effect


def test_every_verdict_carries_its_loglik(tiny_model, ctx):
    from core.domains import knowledge
    from core.jobs import StudentJob
    from student.scoring import Baselines, adapt_and_score, make_grader

    st = Student(tiny_cfg(tiny_model))
    base = Baselines(st, make_grader("f1"), knowledge)
    r = adapt_and_score(st, base, "k", StudentJob("knowledge", "passage", (ctx,), ("",)))
    assert all(isinstance(v.loglik, float) for v in r.verdicts)
    assert all(isinstance(v.loglik, float) for v in base.get(ctx)[0])
    assert [v.loglik for v in r.verdicts] != [v.loglik for v in base.get(ctx)[0]]
