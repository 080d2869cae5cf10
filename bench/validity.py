"""Does an inner-loop recipe rank edits the way their content says it should? Resumable; prints JSON.

On SQuAD passages outside the standard subset (the recipe-tuning range, shuffled indices 300-499 by
default; see `core.contexts.SQUAD_SPLIT`), each student is adapted under its default
recipe (or one with ``--set`` overrides) on:

- passage: the passage alone;
- restate: the deterministic restatement edit of bench/restate_edits.py (never reads the questions);
- bad: the restatement of a *different* passage (the next one in the list);
- v0: the untrained teacher's greedy edit (``seal generate``, cached under --out);

each with the passage appended as the recipe does (``passage_copies``). Every question is scored
by token F1 of the greedy answer and by the gold answer's log-likelihood (`student.loglik`).
Paired differences use a cluster bootstrap over passages; the per-condition intervals
(``*_question_ci``) resample questions and are narrower than a cluster interval would be. A recipe passes when restate - passage
> 0 and passage - bad > 0, each with the 95% interval's lower bound above 0, on log-likelihood.

Rows go to ``--out/<student>.jsonl`` (one per passage and condition) as groups finish; rerunning
skips them (a row is reused only under the same recipe).

    python bench/validity.py [--students gemma3-270m,smollm2-135m-instruct] [--offset 300] [--limit 30]
    python bench/validity.py --heldout      # passages 101-200: score the chosen recipe once
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from _common import REPO, SQUAD, cached_adaptations, restatement, squad_subset

CONDITIONS = ("passage", "restate", "bad", "v0")
PAIRS = (("restate", "passage"), ("passage", "bad"), ("v0", "passage"), ("restate", "bad"))


def v0_edits(ctxs, teacher: str, out: Path, offset: int, limit: int) -> dict[str, str]:
    """context_id -> the untrained teacher's greedy edit, written once by `seal generate`."""
    from core.config import DataConfig
    from orchestration.generate import GenerateConfig, run_generate
    from teacher.config import TeacherConfig

    path = out / f"v0_{teacher}_{offset}_{limit}.json"
    if not path.exists():
        with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON
            run_generate(GenerateConfig(teacher=TeacherConfig(model=teacher),
                                        data=DataConfig(source=str(SQUAD), shuffle_seed=42, offset=offset, limit=limit),
                                        out=str(path)))
    recs = json.loads(path.read_text())["records"]
    got = {r["context_id"]: r["completions"][0] for r in recs}
    missing = [c.context_id for c in ctxs if c.context_id not in got]
    if missing:
        raise SystemExit(f"{path} lacks contexts {missing[:3]}...; delete it to regenerate")
    return got


def run_student(model: str, ctxs, edits: dict, overrides: dict, out: Path, group: int,
                conditions: tuple[str, ...] = CONDITIONS) -> list[dict]:
    """One row per (passage, condition) under the recipe, cached in ``out/<model>.jsonl``."""
    todo = [{"id": f"{c.context_id}/{cond}", "ctx": c, "edit": edits[cond][c.context_id], "condition": cond,
             "train_as": "passage" if cond == "passage" else "edit"} for cond in conditions for c in ctxs]
    return cached_adaptations(model, todo, out / f"{model}.jsonl", overrides, group)


def summarise(rows: list[dict], ctxs, conditions: tuple[str, ...] = CONDITIONS) -> dict:
    from core.stats import bootstrap_ci, paired_cluster_bootstrap

    by = {(r["context_id"], r["condition"]): r for r in rows}
    ids = [c.context_id for c in ctxs]
    pairs = [(a, b) for a, b in PAIRS if a in conditions and b in conditions]
    out = {"contexts": len(ids), "questions": sum(len(by[(i, "passage")]["f1"]) for i in ids), "conditions": {}}
    first = by[(ids[0], "passage")]
    for metric in ("f1", "loglik"):
        base = [x for i in ids for x in by[(i, "passage")][f"base_{metric}"] if x is not None]
        out["conditions"].setdefault("base", {})[metric] = round(sum(base) / len(base), 4)
        for cond in conditions:
            vals = [x for i in ids for x in by[(i, cond)][metric]]
            vals = [x for x in vals if x is not None]
            lo, hi = bootstrap_ci(vals)  # over questions: narrower than a cluster interval
            out["conditions"].setdefault(cond, {})[metric] = round(sum(vals) / len(vals), 4)
            out["conditions"][cond][f"{metric}_question_ci"] = [round(lo, 4), round(hi, 4)]
    for cond in conditions:
        out["conditions"][cond]["mean_steps"] = round(sum(by[(i, cond)]["steps"] for i in ids) / len(ids), 1)
    def paired(a: str, b: str, metric: str, among: list[str]) -> dict:
        d = paired_cluster_bootstrap([list(zip(by[(i, a)][metric], by[(i, b)][metric])) for i in among])
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}

    out["paired"] = {f"{a}-{b}": {m: paired(a, b, m, ids) for m in ("f1", "loglik")} for a, b in pairs}
    # what an edit's length changes: restate - passage on log-likelihood within thirds of the
    # passages ordered by the restatement's length (short, middle, long)
    order = sorted(ids, key=lambda i: by[(i, "restate")]["edit_chars"])
    thirds = [order[k * len(order) // 3:(k + 1) * len(order) // 3] for k in range(3)]
    out["restate-passage_by_length"] = [
        {"edit_chars": [by[(t[0], "restate")]["edit_chars"], by[(t[-1], "restate")]["edit_chars"]],
         "restate_steps": round(sum(by[(i, "restate")]["steps"] for i in t) / len(t), 1),
         "loglik": paired("restate", "passage", "loglik", t)} for t in thirds if t]
    p = out["paired"]
    if "passage-bad" in p:  # the check; the held-out scoring runs restate and passage only
        out["passes"] = p["restate-passage"]["loglik"]["lo"] > 0 and p["passage-bad"]["loglik"]["lo"] > 0
        out["passes_f1"] = p["restate-passage"]["f1"]["lo"] > 0 and p["passage-bad"]["f1"]["lo"] > 0
    out["recipe"] = first["recipe"]
    return out


def markdown(model: str, r: dict) -> str:
    """The README's table of one student's summary."""
    def cell(d):
        return f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"

    c = r["conditions"]
    lines = [f"{model}: {r['contexts']} passages, {r['questions']} questions; passes (loglik): {r.get('passes')}, "
             f"on F1: {r.get('passes_f1')}", "",
             "| condition | F1 | loglik | mean steps |", "|---|---|---|---|",
             f"| base (unadapted) | {c['base']['f1']:.3f} | {c['base']['loglik']:.3f} | 0 |"]
    lines += [f"| {k} | {v['f1']:.3f} | {v['loglik']:.3f} | {v['mean_steps']} |" for k, v in c.items() if k != "base"]
    lines += ["", "| paired difference | F1 | loglik |", "|---|---|---|"]
    lines += [f"| {k} | {cell(v['f1'])} | {cell(v['loglik'])} |" for k, v in r["paired"].items()]
    lines += ["", "| restatement length (chars) | restate steps | restate - passage, loglik |", "|---|---|---|"]
    lines += [f"| {t['edit_chars'][0]}-{t['edit_chars'][1]} | {t['restate_steps']} | {cell(t['loglik'])} "
              f"({t['loglik']['contexts']} passages) |" for t in r["restate-passage_by_length"]]
    return "\n".join(lines)


def main() -> None:
    from core.contexts import SQUAD_SPLIT, squad_role
    from core.models import machine

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--students", default="gemma3-270m,smollm2-135m-instruct")
    ap.add_argument("--teacher", default="smollm2-135m-instruct")
    ap.add_argument("--offset", type=int, default=SQUAD_SPLIT["tuning"][0][0])
    ap.add_argument("--limit", type=int, default=30)
    ap.add_argument("--heldout", action="store_true", help="score the held-out passages 101-200 (once, at the end)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="recipe override, e.g. train.learning_rate=3e-4 (JSON values)")
    ap.add_argument("--conditions", default=",".join(CONDITIONS),
                    help="which of passage,restate,bad,v0 to run (the check needs the first three; --heldout the first two)")
    ap.add_argument("--group", type=int, default=8, help="adaptations trained together (results do not depend on it)")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "validity"))
    args = ap.parse_args()
    if args.heldout:
        ((lo, hi),) = SQUAD_SPLIT["heldout"]
        args.offset, args.limit = lo, hi - lo
    elif squad_role(args.offset, args.offset + args.limit) != "tuning":
        ((lo, hi),) = SQUAD_SPLIT["tuning"]
        raise SystemExit(f"--offset/--limit select passages outside the recipe-tuning range {lo + 1}-{hi}; tune "
                         f"there, or pass --heldout to score once")
    conditions = tuple(args.conditions.split(","))
    need = {"passage", "restate"} if args.heldout else {"passage", "restate", "bad"}
    if not need <= set(conditions) <= set(CONDITIONS):
        raise SystemExit(f"--conditions {args.conditions}: needs {','.join(sorted(need))} (the check's pairs); "
                         f"may add {','.join(c for c in CONDITIONS if c not in need)}")
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    out = Path(args.out) / (f"heldout_{args.offset}_{args.limit}" if args.heldout else f"tuning_{args.offset}_{args.limit}")
    out.mkdir(parents=True, exist_ok=True)
    ctxs = squad_subset(args.offset, args.limit)
    edits = {"passage": {c.context_id: "" for c in ctxs},
             "restate": {c.context_id: restatement(c) for c in ctxs},
             "bad": {c.context_id: restatement(ctxs[(i + 1) % len(ctxs)]) for i, c in enumerate(ctxs)},
             "v0": v0_edits(ctxs, args.teacher, out, args.offset, args.limit) if "v0" in conditions else {}}
    report = {"machine": machine(), "offset": args.offset, "limit": args.limit, "heldout": args.heldout,
              "teacher": args.teacher, "students": {}}
    for model in args.students.split(","):
        rows = run_student(model, ctxs, edits, overrides, out, args.group, conditions)
        report["students"][model] = summarise(rows, ctxs, conditions)
    print(json.dumps(report, indent=1))
    for model, r in report["students"].items():  # the README's tables, on stderr
        print("\n" + markdown(model, r), file=sys.stderr)


if __name__ == "__main__":
    main()
