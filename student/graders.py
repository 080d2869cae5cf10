"""Graders: pure functions ``(answer, gold) -> float in [0, 1]``.

SQuAD's normalisation (lowercase, drop punctuation and articles, squeeze spaces) is applied first.
Token F1 is the default because it gives a finer reward signal than 0/1, and because containment
rewards long, rambling answers (a 24-token answer that lists five names "contains" the gold one).
"""

from __future__ import annotations

import re
import string
from collections import Counter

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(answer: str, gold: str) -> float:
    return float(normalize(answer) == normalize(gold))


def contains(answer: str, gold: str) -> float:
    """Gold span appears in the answer, on word boundaries (so '12' is not found in '1200')."""
    a, g = normalize(answer), normalize(gold)
    if not g:
        return float(not a)
    return float(f" {g} " in f" {a} ")


def token_f1(answer: str, gold: str) -> float:
    a, g = normalize(answer).split(), normalize(gold).split()
    if not a or not g:
        return float(a == g)
    common = sum((Counter(a) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(g)
    return 2 * precision * recall / (precision + recall)


GRADERS = {"exact": exact_match, "contains": contains, "f1": token_f1}
"""Pure graders by config name. 'judge' is not here: it calls a service (see student/judge.py)."""
