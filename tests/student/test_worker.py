"""The worker's staleness rule takes each domain's own reference conditions."""

import pytest

from orchestration.core.queue import Job, Queue
from student.worker import LAG_FLAG, VERSION_FLAG, stale_reason


@pytest.mark.parametrize("domain,condition,stale", [
    ("knowledge", "edit", True), ("knowledge", "base", False), ("knowledge", "passage", False),
    ("arc", "edit", True), ("arc", "base", False), ("arc", "default_ttt", False),
])
def test_reference_conditions_of_the_jobs_domain_are_never_stale(tmp_path, domain, condition, stale):
    with Queue(tmp_path / "q.sqlite") as q:
        q.put([Job("k", "adapt/x", {"domain": domain, "condition": condition}, teacher_version=0)])
        q.set_flag(VERSION_FLAG, "3")
        q.set_flag(LAG_FLAG, "1")  # v0's job at v3: beyond the bound
        reason = stale_reason(q, q.lease("w", ["adapt/x"], 10.0))
    assert (reason is not None) == stale
    if stale:
        assert "max_teacher_lag=1" in reason
