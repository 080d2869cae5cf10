"""Rule-based baseline self-edit writer: restate a passage's sentences plus cloze QA pairs.

Deterministic, standard library only, and blind to the questions: each record is reduced to
its title and context before anything else happens, so ``questions`` is never read.
Usage: python bench/restate_edits.py --out edits.json [--data F] [--seed 42] [--offset 0] [--limit 20]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
from core.contexts import context_id, read_json_records, validate_records  # noqa: E402

MAX_ITEMS, MAX_QA_PER_SENT = 30, 2
ABBREVS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "gen", "col", "lt", "sgt", "capt", "gov",
           "sen", "rep", "rev", "mt", "ft", "no", "vs", "etc", "approx", "ca", "c", "inc", "co", "corp",
           "ltd", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
           "fig", "vol", "ed", "pp", "al", "cf"}
STARTERS = {"The", "A", "An", "In", "It", "This", "These", "He", "She", "They", "However", "On", "At"}
MONTH = (r"(?:January|February|March|April|May|June|July|August|September|October|November|December)")
WORDNUM = r"(?:two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|hundreds|thousands|millions|dozens)"
SCALE = r"(?:hundred|thousand|million|billion|trillion)"
# (kind, regex) in priority order; earlier kinds win overlaps.
NUMERIC = [
    ("date", rf"\b(?:\d{{1,2}}\s+{MONTH}|{MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?)\s+\d{{3,4}}\b"),
    ("month", rf"\b{MONTH}\s+\d{{3,4}}\b"),
    ("date", rf"\b{MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?\b(?![\d,])"),
    ("century", r"\b(?:the\s+)?(?:(?:early|mid|late)[\s-]+)?\d{1,2}(?:st|nd|rd|th)[\s-]century\b"),
    ("decade", r"\b(?:the\s+)?(?:(?:early|mid|late)[\s-]+)?\d{3}0s\b"),
    ("number", rf"(?:[$£€]\s?)?(?<![\w.,\-–])\d+(?:,\d{{3}})*(?:\.\d+)?(?!\w|[,.]\d)(?:\s+{SCALE})?(?:\s*%|\s+per\s?cent)?"),
    ("count", rf"\b{WORDNUM}(?:\s+{SCALE})?(?=\s+[a-z])"),
]
CAP = r"(?:[A-Z]\.){2,}|[A-Z][\w\-]*(?:[’'](?!s\b)\w+)*"
CONN = r"(?:of|the|de|del|da|di|la|le|von|van|der|du|al|y)"
PROPER = re.compile(rf"(?:{CAP})(?:\s+(?:{CONN}\s+){{0,2}}(?:{CAP}))+")
NOT_PLURAL = {"was", "is", "has", "does", "as", "its", "his", "this", "thus", "saw", "us", "plus"}
LABELS = r"(?:article|section|chapter|clause|number|no\.|page|route|highway|flight|[A-Z][\w\-]*)"
NOT_LABELS = {"about", "over", "some", "nearly", "almost", "only", "by", "in", "around", "approximately", "roughly",
              "under", "more", "than", "at", "with", "after", "before", "for", "since", "of", "all", "these",
              "those", "the", "its", "their", "his", "her", "our", "on", "from", "to", "until", "and", "or"}


def split_sentences(text: str) -> list[str]:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s*\[\d+\]|(?<=[.,;])\s?:\d+(?:[–\-]\d+)?(?=\s)", "", text)  # [1] and .:93 citations
    out, start = [], 0
    for m in re.finditer(r"[.!?][\"'”’)\]]*\s+(?=[\"“'(\[]?[A-Z0-9])", text):
        if text[m.start()] == ".":
            tok = text[start:m.start() + 1].split()[-1].lstrip("\"“'([")
            nxt = text[m.end():].split(" ", 1)[0]
            if tok[:-1].lower() in ABBREVS or re.fullmatch(r"[A-Z]\.", tok):
                continue
            if re.fullmatch(r"(?:[A-Za-z]\.){2,}", tok) and nxt not in STARTERS:
                continue
        seg = text[start:m.end()]
        if len(seg) < 400 and (seg.count('"') % 2 or seg.count("“") > seg.count("”")):  # inside an open quotation
            continue
        out.append(text[start:m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if len(s.split()) >= 3]


def normalise(sent: str) -> str:
    s = re.sub(r"\s*\[\d+\]", "", sent).strip()
    s = s[:1].upper() + s[1:]
    return s if re.search(r"[.!?][\"'”’)]*$", s) else s + "."


def candidate_spans(s: str) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, wh-phrase) spans: numbers/dates first, then proper nouns."""
    spans: list[tuple[int, int, str]] = []
    free = lambda a, b: all(b <= x or a >= y for x, y, _ in spans)  # noqa: E731
    first = m.start() if (m := re.search(r"[A-Za-z0-9]", s)) else 0
    for kind, rx in NUMERIC:
        for m in re.finditer(rx, s):
            a, b, t, k = m.start(), m.end(), m.group(), kind
            if not free(a, b):
                continue
            if k == "number":
                after = re.match(r"\s+([a-z]+)", s[b:])
                plural = bool(after and after.group(1).endswith("s") and after.group(1) not in NOT_PLURAL)
                if re.fullmatch(r"1\d{3}|20\d{2}", t) and not plural:
                    k = "year"
                elif t[0] in "$£€":
                    k = "money"
                elif "%" in t or "cent" in t:
                    k = "percent"
                elif (lab := re.search(rf"\b({LABELS})\s+$", s[:a])) and not re.search(SCALE, t) \
                        and lab.group(1).lower() not in NOT_LABELS:
                    k = "numeral"
                elif after or re.search(SCALE, t):
                    k = "count"
                else:
                    k = "numeral"
            prep = re.search(r"\b(in|on|during)\s+$", s[:a])
            at_end = re.fullmatch(r"[.!?\"'”’)]*", s[b:])
            if k in ("year", "month", "date", "decade") and prep and prep.start() > first and at_end:
                spans.append((prep.start(), b, "when"))
                continue
            wh = {"year": "what year", "month": "what month", "date": "what date", "century": "what century",
                  "decade": "what decade", "money": "how much", "percent": "what percentage",
                  "count": "how many", "numeral": "what number"}[k]
            spans.append((a, b, wh))
    for m in PROPER.finditer(s):
        a, b = m.start(), m.end()
        if a <= first:  # drop the sentence's first word (and a connector after it)
            rest = re.match(rf"\S+\s+(?:(?:{CONN})\s+)*", s[a:b])
            a += rest.end() if rest else b - a
            if len(re.findall(CAP, s[a:b])) < 2:
                continue
        if re.match(r"['’]s\s+[A-Z]", s[b:]):  # possessive inside a longer name (St Peter's Church)
            continue
        wh = "what"
        if re.match(r"['’]s\b", s[b:]):
            b, wh = b + 2, "whose"
        the = re.search(r"\b(?:[Tt]he|[Aa]n?)\s+$" if wh == "whose" else r"\b[Tt]he\s+$", s[:a])
        if the:
            a = the.start()
        if free(a, b):
            spans.append((a, b, wh))
    return spans


def cloze(s: str, a: int, b: int, wh: str) -> str:
    answer = re.sub(r"^[Tt]he\s+|['’]s$", "", s[a:b]).rstrip(".,;: ")
    q = (s[:a] + wh + s[b:]).rstrip()
    q = re.sub(r"[.!?;:,]*[\"'”’)]*$", "", q) if not q.endswith(")") else q
    return f"Question: {q[:1].upper() + q[1:]}? Answer: {answer}"


def make_edit(context: str) -> list[str]:
    sents = [normalise(s) for s in split_sentences(context)][:MAX_ITEMS]
    qas = [[cloze(s, *sp) for sp in candidate_spans(s)[:MAX_QA_PER_SENT]] for s in sents]
    budget, chosen = MAX_ITEMS - len(sents), [[] for _ in sents]
    for rnd in range(MAX_QA_PER_SENT):  # round-robin so every sentence gets a first QA first
        for i, qs in enumerate(qas):
            if rnd < len(qs) and budget > 0:
                chosen[i].append(qs[rnd])
                budget -= 1
    items, seen = [], set()
    for s, qs in zip(sents, chosen):
        for it in [s, *qs]:
            if it.strip() and it not in seen:
                seen.add(it)
                items.append(it)
    return items[:MAX_ITEMS]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data/squad/squad_val.json",
                    help="SQuAD-schema JSON (relative paths resolve against the repository root)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--limit", type=int, default=20)
    args = ap.parse_args(argv)
    data = Path(args.data) if Path(args.data).is_absolute() else (REPO / args.data).resolve()
    # Keep only title/context so the questions are never read.
    rows = [{k: r[k] for k in ("title", "context") if k in r} if isinstance(r, dict) else r
            for r in read_json_records(data)]
    rows = validate_records(rows, str(data), need_questions=False)
    random.Random(args.seed).shuffle(rows)
    rows = rows[args.offset:args.offset + args.limit]
    out = [{"title": r["title"], "context": r["context"], "context_id": context_id(r["title"], r["context"]),
            "completions": ["\n".join(make_edit(r["context"]))]} for r in rows]
    Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    n_items = [len(o["completions"][0].splitlines()) for o in out]
    print(json.dumps({"passages": len(out), "mean_items_per_edit": round(sum(n_items) / max(len(out), 1), 2),
                      "out": str(args.out)}))


if __name__ == "__main__":
    main()
