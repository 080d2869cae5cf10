"""Reward rules as tables: gains in, rewarded edit ids out."""

import pytest

from core.rewards import EditGain, RewardConfig, edit_gains, rewarded


def G(edit_id, ctx, sample, gain):
    return EditGain(edit_id, ctx, sample, gain)


GAINS = [G("a0", "A", 0, 0.10), G("a1", "A", 1, 0.30), G("a2", "A", 2, 0.0),
         G("b0", "B", 0, -0.2), G("b1", "B", 1, -0.1),
         G("c0", "C", 0, 0.05), G("c1", "C", 1, 0.05)]


@pytest.mark.parametrize("cfg,expected", [
    (RewardConfig("binary_gain"), ["a0", "a1", "c0", "c1"]),           # strictly positive; 0.0 is not a gain
    (RewardConfig("threshold", delta=0.1), ["a0", "a1"]),              # >= delta
    (RewardConfig("threshold", delta=0.0), ["a0", "a1", "a2", "c0", "c1"]),
    (RewardConfig("threshold", delta=-0.15), ["a0", "a1", "a2", "b1", "c0", "c1"]),
    (RewardConfig("best_of_k"), ["a1", "c0"]),                         # B's best is negative; C's tie -> sample 0
    (RewardConfig("best_of_k", positive_only=False), ["a1", "b1", "c0"]),
    (RewardConfig("best_of_k", margin=0.2), ["a1"]),                   # C's best (0.05) is within the margin
    (RewardConfig("advantage"), ["a1"]),                               # A's mean 0.133: only a1 is above it
    (RewardConfig("advantage", positive_only=False), ["a1", "b1"]),    # b1 beats B's mean, with a loss
    (RewardConfig("advantage", margin=0.1), ["a1"]),                   # a1's advantage is 0.167
    (RewardConfig("advantage", margin=0.2), []),
])
def test_rules(cfg, expected):
    assert rewarded(cfg, GAINS) == expected


def test_nothing_rewarded_is_an_empty_list():
    assert rewarded(RewardConfig("binary_gain"), [G("x", "X", 0, 0.0), G("y", "X", 1, -1.0)]) == []
    assert rewarded(RewardConfig("best_of_k"), []) == []


@pytest.mark.parametrize("how,expected_gain,expected_rewarded", [
    ("mean", 0.05, ["e0"]),   # (0.3 + -0.2) / 2
    ("min", -0.2, []),        # one student lost: not rewarded under min
])
def test_students_aggregate_before_the_rule(how, expected_gain, expected_rewarded):
    per_student = {"e0": {"s1": 0.3, "s2": -0.2}}
    gains, incomplete = edit_gains(per_student, ["s1", "s2"], {"e0": ("A", 0)}, how)
    assert incomplete == [] and gains[0].gain == pytest.approx(expected_gain)
    assert rewarded(RewardConfig("binary_gain", aggregate=how), gains) == expected_rewarded


def test_edit_missing_a_student_is_left_out_not_zeroed():
    per_student = {"e0": {"s1": 0.3, "s2": 0.1}, "e1": {"s1": 0.5}}  # e1's s2 job died
    gains, incomplete = edit_gains(per_student, ["s1", "s2"], {"e0": ("A", 0), "e1": ("A", 1), "e2": ("A", 2)}, "mean")
    assert [g.edit_id for g in gains] == ["e0"] and incomplete == ["e1", "e2"]
    assert rewarded(RewardConfig("best_of_k"), gains) == ["e0"]


@pytest.mark.parametrize("cfg,needle", [(RewardConfig("best"), "reward.rule"), (RewardConfig(aggregate="max"), "reward.aggregate"),
                                        (RewardConfig("advantage", margin=-0.1), "reward.margin")])
def test_unknown_rule_or_aggregate(cfg, needle):
    with pytest.raises(ValueError, match=needle):
        rewarded(cfg, GAINS)
