"""Reward rules: pure functions from per-edit gains to the set of rewarded edit ids.

A gain is a student's adapted score minus its own unadapted baseline on the same questions (scores
are the grader's mean over a context's questions; F1 gives a finer signal than 0/1). With several
students the gains of one edit are aggregated first (mean or min), then the rule applies:

- ``binary_gain``: the edit raised the score (gain > 0). The paper's rule.
- ``best_of_k``: the best edit of each context, and only if its gain > 0 (unless ``positive_only``
  is off). What the reference implementation actually did. Ties go to the lower sample index.
- ``threshold``: gain >= delta.

An edit that lacks a result from some student (its job dead-lettered or dropped as stale) gets no
gain at all: it is left out of the rule and counted by the caller, never treated as a zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestration.core.config import Choice, check_choice


class Rule(Choice):
    binary_gain = "binary_gain"
    best_of_k = "best_of_k"
    threshold = "threshold"


class Aggregate(Choice):
    mean = "mean"
    min = "min"


@dataclass
class RewardConfig:
    """How student results become rewards for the teacher's edits."""

    rule: Rule = Rule.binary_gain
    """'binary_gain' (gain > 0), 'best_of_k' (best edit per context) or 'threshold' (gain >= delta)."""
    aggregate: Aggregate = Aggregate.mean
    """With several students: 'mean' or 'min' of the per-student gains of an edit, before the rule."""
    delta: float = 0.0
    """Minimum gain for 'threshold'."""
    positive_only: bool = True
    """'best_of_k' rewards a context's best edit only if its gain > 0."""

    def check(self, key: str = "reward") -> None:
        check_choice(self, key, "rule", Rule)
        check_choice(self, key, "aggregate", Aggregate)


@dataclass(frozen=True)
class EditGain:
    edit_id: str
    context_id: str
    sample: int
    gain: float  # aggregated over students


def aggregate(gains: list[float], how: str) -> float:
    if not gains:
        raise ValueError("aggregate() needs at least one gain")
    return min(gains) if how == "min" else sum(gains) / len(gains)


def edit_gains(per_student: dict[str, dict[str, float]], students: list[str], meta: dict[str, tuple[str, int]],
               how: str) -> tuple[list[EditGain], list[str]]:
    """Aggregate ``per_student[edit_id][student] = gain`` over ``students``.

    ``meta[edit_id] = (context_id, sample)``. Returns (gains of complete edits, ids of incomplete ones),
    both in ``meta`` order.
    """
    complete, incomplete = [], []
    for edit_id, (ctx, sample) in meta.items():
        got = per_student.get(edit_id, {})
        if all(s in got for s in students):
            complete.append(EditGain(edit_id, ctx, sample, aggregate([got[s] for s in students], how)))
        else:
            incomplete.append(edit_id)
    return complete, incomplete


def binary_gain(gains: list[EditGain]) -> list[str]:
    return [g.edit_id for g in gains if g.gain > 0]


def threshold(gains: list[EditGain], delta: float) -> list[str]:
    return [g.edit_id for g in gains if g.gain >= delta]


def best_of_k(gains: list[EditGain], positive_only: bool = True) -> list[str]:
    best: dict[str, EditGain] = {}
    for g in gains:
        cur = best.get(g.context_id)
        if cur is None or g.gain > cur.gain or (g.gain == cur.gain and g.sample < cur.sample):
            best[g.context_id] = g
    keep = {g.edit_id for g in best.values() if g.gain > 0 or not positive_only}
    return [g.edit_id for g in gains if g.edit_id in keep]


def rewarded(cfg: RewardConfig, gains: list[EditGain]) -> list[str]:
    """The rewarded edit ids, in the order of ``gains``."""
    cfg.check()
    if cfg.rule == "binary_gain":
        return binary_gain(gains)
    if cfg.rule == "threshold":
        return threshold(gains, cfg.delta)
    return best_of_k(gains, cfg.positive_only)
