"""Small statistics for reports: percentile bootstrap intervals over questions, and paired
differences with a cluster bootstrap over contexts.

Questions are the sampling unit (a held-out set is a sample of questions), so an interval says how
much an accuracy could move on another draw of as many questions. Seeded: the same scores give the
same interval.
"""

from __future__ import annotations

import random
import statistics


def bootstrap_ci(scores: list[float], *, resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``scores``; (nan, nan) for an empty list."""
    if not scores:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    n = len(scores)
    means = sorted(sum(rng.choices(scores, k=n)) / n for _ in range(resamples))
    lo = means[int((1 - level) / 2 * (resamples - 1))]
    hi = means[int((1 + level) / 2 * (resamples - 1))]
    return lo, hi


def mean(values) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    xs = [x for x in values if x is not None]
    return sum(xs) / len(xs) if xs else None


def spread(values: list[float]) -> float:
    """Sample standard deviation (0 for fewer than two values)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def paired_cluster_bootstrap(clusters: list[list[tuple[float, float]]], *, resamples: int = 2000,
                             level: float = 0.95, seed: int = 0) -> dict:
    """Mean paired difference a - b over questions, with a percentile interval from resampling
    whole clusters (contexts: the questions of one passage share one adaptation, so resampling
    questions would make the interval too narrow). ``clusters[c]`` holds (a, b) per question of
    context c; None values (a question one side lacks) are left out. Returns {diff, lo, hi,
    contexts, questions}; nan when there is nothing to compare."""
    cl = [[(a, b) for a, b in c if a is not None and b is not None] for c in clusters]
    cl = [c for c in cl if c]
    sums = [sum(a - b for a, b in c) for c in cl]
    sizes = [len(c) for c in cl]
    n = sum(sizes)
    if not n:
        return {"diff": float("nan"), "lo": float("nan"), "hi": float("nan"), "contexts": 0, "questions": 0}
    rng = random.Random(seed)
    idx = range(len(cl))
    stats = []
    for _ in range(resamples):
        pick = rng.choices(idx, k=len(cl))
        stats.append(sum(sums[i] for i in pick) / sum(sizes[i] for i in pick))
    stats.sort()
    return {"diff": sum(sums) / n, "lo": stats[int((1 - level) / 2 * (resamples - 1))],
            "hi": stats[int((1 + level) / 2 * (resamples - 1))], "contexts": len(cl), "questions": n}


def per_question(groups: list[tuple[str, list[float | None]]]) -> dict[str, list[float | None]]:
    """Context id -> the per-question mean over that context's groups (its completions, its seeds),
    from (context id, per-question values) pairs; None for a question any group lacks a value for."""
    by: dict[str, list[list[float | None]]] = {}
    for ctx, values in groups:
        by.setdefault(ctx, []).append(values)
    out = {}
    for ctx, lists in by.items():
        n = min(map(len, lists))
        out[ctx] = [None if any(v[i] is None for v in lists) else sum(v[i] for v in lists) / len(lists)
                    for i in range(n)]
    return out


def paired_by_context(a: dict[str, list[float | None]], b: dict[str, list[float | None]], **kw) -> dict:
    """`paired_cluster_bootstrap` of a - b over the contexts both sides have (``per_question`` maps)."""
    return paired_cluster_bootstrap([list(zip(a[c], b[c])) for c in sorted(a) if c in b], **kw)


def fmt_paired(d: dict, digits: int = 3) -> str:
    """'+0.012 [-0.050, +0.071] (4 contexts, 33 q.)'."""
    if not d["questions"]:
        return "n/a"
    f = f"{{:+.{digits}f}}"
    return (f"{f.format(d['diff'])} [{f.format(d['lo'])}, {f.format(d['hi'])}] "
            f"({d['contexts']} contexts, {d['questions']} q.)")


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):  # ties share their mean rank
            ranks[order[k]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman rank correlation (ties get their mean rank); None when either side is constant or
    has fewer than two values."""
    if len(a) != len(b):
        raise ValueError("spearman() needs two lists of one length")
    if len(a) < 2:
        return None
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    if not va or not vb:
        return None
    return sum((x - ma) * (y - mb) for x, y in zip(ra, rb)) / (va * vb) ** 0.5
