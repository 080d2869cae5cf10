"""The worker's staleness rule takes each domain's own reference conditions."""

import pytest

from core.arc.tasks import synthetic_tasks
from core.contexts import load_contexts
from core.delivery import LAG_FLAG, VERSION_FLAG, stale_reason
from core.jobs import StudentJob
from core.queue import Job, Queue


@pytest.mark.parametrize("domain,condition,stale", [
    ("knowledge", "edit", True), ("knowledge", "base", False), ("knowledge", "passage", False),
    ("arc", "edit", True), ("arc", "base", False), ("arc", "default_ttt", False),
])
def test_reference_conditions_of_the_jobs_domain_are_never_stale(tmp_path, domain, condition, stale):
    ctx = synthetic_tasks(1)[0] if domain == "arc" else load_contexts("demo", limit=1)[0]
    with Queue(tmp_path / "q.sqlite") as q:
        q.put([Job("k", "adapt/x", StudentJob(domain, condition, (ctx,), ("",)), teacher_version=0)])
        q.set_flag(VERSION_FLAG, "3")
        q.set_flag(LAG_FLAG, "1")  # v0's job at v3: beyond the bound
        reason = stale_reason(q, q.lease("w", ["adapt/x"], 10.0))
    assert (reason is not None) == stale
    if stale:
        assert "max_teacher_lag=1" in reason
