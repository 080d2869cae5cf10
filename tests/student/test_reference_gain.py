"""reward.baseline: reference. An empty edit's training data is exactly the passage-only recipe's, so
its gain over the reference is 0: exactly when each trains alone (K = 1, fp32), and within float
noise when they train in one fused group with other adaptations (the default K = 8)."""

from __future__ import annotations

import pytest

from core import rewards as R
from core.contexts import load_contexts
from core.jobs import StudentJob
from student.model import Student
from student.scoring import Baselines, adapt_and_score_many, make_grader
from tests.student.test_model import tiny_cfg


@pytest.fixture(scope="module")
def ctxs():
    return load_contexts("demo", limit=4)


def test_empty_edit_gains_nothing_over_the_reference(tiny_model, ctxs):
    st = Student(tiny_cfg(tiny_model))
    base = Baselines(st, make_grader("f1"))
    ctx = ctxs[0]
    ref_job = ("passage", StudentJob("knowledge", "passage", (ctx,), ("",)))
    empty_job = ("empty", StudentJob("knowledge", "edit", (ctx,), ("",)))
    (ref,), (empty,) = adapt_and_score_many(st, base, [ref_job]), adapt_and_score_many(st, base, [empty_job])
    assert empty.train["steps"] > 0 and empty.train["steps"] == ref.train["steps"]
    for signal in ("score", "loglik"):
        g = R.gains(empty, ref, signal)
        assert g["reference"] == 0.0, signal  # K = 1, fp32: bit for bit
        assert g["base"] is not None
    assert R.gains(empty, ref, "loglik")["base"] != 0.0  # the adaptation did change the model

    # K = 8: both in one fused group, beside six other edits of other contexts
    others = [(f"other{i}", StudentJob("knowledge", "edit", (c,), (f"{c.title} is a place.\nIt has {i} towers.",), sample=i))
              for i, c in zip(range(6), ctxs[1:] * 2)]
    got = adapt_and_score_many(st, base, [ref_job, *others[:3], empty_job, *others[3:]])
    assert not any(isinstance(r, Exception) for r in got) and got[0].train["group"] == 8
    ref8, empty8 = got[0], got[4]
    for signal in ("score", "loglik"):
        assert R.gains(empty8, ref8, signal)["reference"] == pytest.approx(0.0, abs=1e-6), signal
    assert ref8.loglik == pytest.approx(ref.loglik, abs=1e-5)  # the group does not change the result


def test_gains_are_none_without_a_side(tiny_model, ctxs):
    st = Student(tiny_cfg(tiny_model))
    base = Baselines(st, make_grader("f1"))
    (res,) = adapt_and_score_many(st, base, [("e", StudentJob("knowledge", "edit", (ctxs[0],), ("A fact.",)))])
    g = R.gains(res, None, "loglik")
    assert g["reference"] is None
    assert g["base"] == pytest.approx(res.loglik - res.baseline_loglik)
    assert res.baseline_loglik == pytest.approx(sum(v.loglik for v in base.get(ctxs[0])[0]) / len(ctxs[0].questions))
