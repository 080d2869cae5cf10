"""The SQuAD three-way split (core.contexts.SQUAD_SPLIT) holds in every shipped config:
held-out contexts come from the held-out range (or, for the versions between ReST^EM rounds, a
teacher-range slice), training contexts from the teacher-training or recipe-tuning ranges, and no
config's training and held-out passages overlap."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from core.contexts import SQUAD_SPLIT, squad_role

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def squad_ranges(node) -> dict[str, range]:
    """role -> the shuffled passage indices a config's data / heldout section reads, for SQuAD sources."""
    out = {}
    for role in ("data", "heldout"):
        d = node.get(role)
        if d is not None and "squad" in str(d.get("source", "")):
            assert d.get("shuffle_seed") == 42, f"{role} must use the standard shuffle (shuffle_seed: 42)"
            start = d.get("offset", 0)
            out[role] = range(start, start + d.limit)
    return out


def within(r: range, role: str) -> bool:
    return squad_role(r.start, r.stop) == role


def test_the_split_is_disjoint_ranges_that_cover_everything_after_the_first_100():
    ranges = sorted((lo, hi, role) for role, rs in SQUAD_SPLIT.items() for lo, hi in rs)
    assert ranges[0][0] == 100 and ranges[-1][1] is None
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, no overlap
    assert squad_role(200, 300) == "teacher" and squad_role(500, 540) == "teacher" and squad_role(300, 500) == "tuning"
    assert squad_role(290, 310) is None and squad_role(150, 201) is None  # a selection across two roles


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_respects_the_split(path):
    node = OmegaConf.load(path)
    nodes = [node] + [node[k] for k in ("train",) if k in node]  # compare configs nest a train config
    for n in nodes:
        ranges = squad_ranges(n)
        if "heldout" in ranges:  # the held-out range, or (rest_em_squad) a slice of the teacher range that
            # scores each version between rounds, so that 101-200 are scored only for the final teacher
            assert within(ranges["heldout"], "heldout") or within(ranges["heldout"], "teacher"), \
                f"{path.name}: heldout {ranges['heldout']}"
        if "data" in ranges:
            assert within(ranges["data"], "teacher") or within(ranges["data"], "tuning"), \
                f"{path.name}: data {ranges['data']} must be in the teacher-training or tuning range"
        if len(ranges) == 2:
            assert not set(ranges["data"]) & set(ranges["heldout"]), f"{path.name}: data and heldout overlap"


def test_some_configs_read_squad():
    """The check above is not vacuous."""
    assert sum(bool(squad_ranges(OmegaConf.load(p))) for p in CONFIGS) >= 4
