"""Reward rules: pure functions from per-edit gains to the set of rewarded edit ids.

A gain is a student's value after adapting on the edit minus the same value for a baseline, on the
same questions. The value (``signal``) is the grader's mean score over the context's questions, or
the mean gold-answer log-likelihood (`student.loglik`: continuous, and defined even when every
greedy answer is wrong). The baseline is the unadapted student (``base``), or the domain's fixed
recipe on the same context (``reference``: the passage alone for knowledge, `default_ttt` for ARC),
which every edit's training data contains too, so the gain is what the edit adds. With several
students the gains of one edit are aggregated first (mean or min), then the rule applies:

- ``binary_gain``: the edit raised the score (gain > 0). The paper's rule.
- ``best_of_k``: the best edit of each context, and only if its gain > ``margin`` (unless
  ``positive_only`` is off). What the reference implementation actually did. Ties go to the lower
  sample index.
- ``advantage``: every edit whose advantage (its gain minus the mean gain of its context's scored
  edits) exceeds ``margin``, and, with ``positive_only``, whose gain > 0. Like best_of_k it ranks
  within the passage, where the reward is reliable (a passage's edits share its difficulty and its
  reference), but it keeps every edit clearly above its siblings, not just one.
- ``threshold``: gain >= delta.

An edit that lacks a result from some student (its job dead-lettered or dropped as stale) gets no
gain at all: it is left out of the rule and counted by the caller, never treated as a zero.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.config import Choice, check_choice, check_min


class Rule(Choice):
    binary_gain = "binary_gain"
    best_of_k = "best_of_k"
    advantage = "advantage"
    threshold = "threshold"


class Aggregate(Choice):
    mean = "mean"
    min = "min"


class Baseline(Choice):
    base = "base"
    reference = "reference"


class Signal(Choice):
    score = "score"
    loglik = "loglik"


@dataclass
class RewardConfig:
    """How student results become rewards for the teacher's edits."""

    rule: Rule = Rule.binary_gain
    """'binary_gain' (gain > 0), 'best_of_k' (best edit per context), 'advantage' (edits above their
    context's mean gain) or 'threshold' (gain >= delta)."""
    aggregate: Aggregate = Aggregate.mean
    """With several students: 'mean' or 'min' of the per-student gains of an edit, before the rule."""
    delta: float = 0.0
    """Minimum gain for 'threshold'."""
    positive_only: bool = True
    """'best_of_k' rewards a context's best edit only if its gain > ``margin``; 'advantage' rewards
    only edits with gain > 0."""
    margin: float = 0.0
    """'best_of_k': the gain a context's best edit must exceed (with ``positive_only``); 'advantage':
    the advantage an edit must exceed. >= 0; in the signal's units (a mean log-likelihood in nats, or
    a score), against the seed-to-seed noise of one adaptation."""
    baseline: Baseline = Baseline.base
    """What a gain is measured against: 'base' (the unadapted student, the paper's rule) or
    'reference' (the domain's fixed recipe on the same context: the passage-only adaptation for
    knowledge, `default_ttt` for ARC), one extra adaptation per (student, context), queued and
    stored like any result."""
    signal: Signal = Signal.score
    """What is compared: 'score' (the grader's mean over the context's questions) or 'loglik' (the
    mean gold-answer log-likelihood after the answer prompt, without the passage; question-style
    domains only)."""

    def check(self, key: str = "reward") -> None:
        check_choice(self, key, "rule", Rule)
        check_choice(self, key, "aggregate", Aggregate)
        check_choice(self, key, "baseline", Baseline)
        check_choice(self, key, "signal", Signal)
        check_min(self, key, 0, "margin")


def value(res, signal: str) -> float | None:
    """A result's value under ``signal`` (None: it has no log-likelihood)."""
    return res.score if signal == "score" else res.loglik


def gains(res, reference, signal: str) -> dict[str, float | None]:
    """A result's gain over each baseline under ``signal``: {'base': ..., 'reference': ...}; None
    where a side has no value (no reference result, or no log-likelihood)."""
    v = value(res, signal)
    base = res.baseline_score if signal == "score" else res.baseline_loglik
    ref = None if reference is None else value(reference, signal)
    return {"base": None if v is None or base is None else v - base,
            "reference": None if v is None or ref is None else v - ref}


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


def best_of_k(gains: list[EditGain], positive_only: bool = True, margin: float = 0.0) -> list[str]:
    best: dict[str, EditGain] = {}
    for g in gains:
        cur = best.get(g.context_id)
        if cur is None or g.gain > cur.gain or (g.gain == cur.gain and g.sample < cur.sample):
            best[g.context_id] = g
    keep = {g.edit_id for g in best.values() if g.gain > margin or not positive_only}
    return [g.edit_id for g in gains if g.edit_id in keep]


def advantages(gains: list[EditGain]) -> dict[str, float]:
    """edit id -> its gain minus the mean gain of its context's edits (among ``gains``)."""
    by_ctx: dict[str, list[float]] = {}
    for g in gains:
        by_ctx.setdefault(g.context_id, []).append(g.gain)
    return {g.edit_id: g.gain - sum(by_ctx[g.context_id]) / len(by_ctx[g.context_id]) for g in gains}


def advantage(gains: list[EditGain], positive_only: bool = True, margin: float = 0.0) -> list[str]:
    adv = advantages(gains)
    return [g.edit_id for g in gains if adv[g.edit_id] > margin and (g.gain > 0 or not positive_only)]


def rewarded(cfg: RewardConfig, gains: list[EditGain]) -> list[str]:
    """The rewarded edit ids, in the order of ``gains``."""
    cfg.check()
    if cfg.rule == "binary_gain":
        return binary_gain(gains)
    if cfg.rule == "threshold":
        return threshold(gains, cfg.delta)
    if cfg.rule == "advantage":
        return advantage(gains, cfg.positive_only, cfg.margin)
    return best_of_k(gains, cfg.positive_only, cfg.margin)
