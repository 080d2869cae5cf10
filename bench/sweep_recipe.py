"""Staged sweep of the student's default recipe on the SQuAD subset. Resumable; prints JSON.

For each setting and built-in student, every context is scored under base (once per student:
it does not depend on the recipe), passage (train on the passage alone) and edits (train on the
deterministic restatement edit of bench/restate_edits.py, which never reads the questions).
Both token F1 and containment are computed from the same answers. Rows go to
``--out/rows.jsonl`` as they finish; rerunning skips them.

Stage 1 crosses learning rate with a per-edit step budget; stage 2 varies the rank and the
appended passage around the stage-1 winner (best mean edits F1 over the students); stage 3 varies
the LoRA target modules and a higher learning rate around the same winner. Choose on F1.
``meet_target`` lists the settings that meet the recipe target (for every student: passage + edits
>= passage alone, and both > base). A row is reused only if its setting's parameters are unchanged
(a different stage-1 winner re-runs stages 2-3).

    python bench/sweep_recipe.py --offset 300 --limit 20        # stages 1, 2 and 3
    python bench/sweep_recipe.py --offset 320 --limit 40 --only S2 # confirm one setting

Tune only on passages >= 300 (`core.contexts.SQUAD_SPLIT`); the README's sweep
table was made on passages 1-20, before the split, and is labelled so.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import restatement, squad_subset

from student.graders import contains

STAGE1 = {  # learning rate x per-edit step budget (epochs over the sequences, capped by max_steps)
    "S1": {"learning_rate": 1e-3, "epochs": 3},
    "S2": {"learning_rate": 1e-3, "epochs": 10, "max_steps": 20},
    "S3": {"learning_rate": 3e-4, "epochs": 10, "max_steps": 20},
}


def stage2(win: dict) -> dict:
    return {
        "S4": {**win, "r": 32, "alpha": 64},
        "S5": {**win, "passage_copies": 0},
    }


def stage3(win: dict) -> dict:
    return {
        "S6": {**win, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
        "S7": {**win, "targets": ["gate_proj", "up_proj", "down_proj"]},
        "S8": {**win, "learning_rate": 2e-3},
    }


def row_key(setting: dict, model: str, context_id: str, cond: str) -> str:
    """Base rows do not depend on the recipe; the others are keyed by the setting's parameters."""
    recipe = "-" if cond == "base" else json.dumps(setting, sort_keys=True)
    return f"{recipe}|{model}|{context_id}|{cond}"


def apply(student, setting: dict) -> None:
    t, lo = student.cfg.train, student.cfg.lora
    t.learning_rate, t.epochs = setting["learning_rate"], setting["epochs"]
    t.max_steps = setting.get("max_steps", 0)
    t.passage_copies = setting.get("passage_copies", 1)
    lo.r, lo.alpha = setting.get("r", 16), setting.get("alpha", 32)
    lo.target_modules = setting.get("targets", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def run_setting(name, setting, models, contexts, out: Path, done: set, students: dict) -> None:
    from core.jobs import StudentJob
    from core.runs import append_jsonl
    from student.config import StudentConfig
    from student.model import Student
    from student.scoring import Baselines, adapt_and_score, make_grader

    for model in models:
        if model not in students:
            s = Student(StudentConfig(model=model))
            students[model] = (s, Baselines(s, make_grader("f1")))
        student, base = students[model]
        apply(student, setting)
        for ctx in contexts:
            for cond in ("base", "passage", "edits"):
                key = row_key(setting, model, ctx.context_id, cond)
                if key in done:
                    continue
                if cond == "base":
                    verdicts, score = base.get(ctx)[:2]
                    train = {}
                else:
                    job = StudentJob("knowledge", cond, (ctx,), (restatement(ctx) if cond == "edits" else "",))
                    r = adapt_and_score(student, base, key, job)
                    verdicts, score, train = r.verdicts, r.score, {**r.train, **r.timings}
                row = {"key": key, "setting": name, "params": setting, "model": model, "context_id": ctx.context_id,
                       "condition": cond, "f1": score,
                       "contains": sum(contains(v.answer, v.gold) for v in verdicts) / len(verdicts),
                       "n_questions": len(verdicts), "answers": [v.answer for v in verdicts], "train": train}
                append_jsonl(out / "rows.jsonl", json.dumps(row))
                done.add(key)


def table(rows: list[dict], settings: dict) -> dict:
    """{setting: {model: {condition: {f1, contains, n_questions}}}}, micro-averaged over questions.
    Only rows run with a setting's current parameters count."""
    acc: dict = {}
    bases = [r for r in rows if r["condition"] == "base"]
    for r in rows:
        if r["condition"] == "base" or settings.get(r["setting"]) != r["params"]:
            continue
        for x in (r, *[b for b in bases if b["model"] == r["model"] and b["context_id"] == r["context_id"]]):
            cell = acc.setdefault(r["setting"], {}).setdefault(r["model"], {}).setdefault(
                x["condition"], {"f1": 0.0, "contains": 0.0, "n_questions": 0, "ids": set()})
            if x["context_id"] in cell["ids"]:
                continue
            cell["ids"].add(x["context_id"])
            cell["f1"] += x["f1"] * x["n_questions"]
            cell["contains"] += x["contains"] * x["n_questions"]
            cell["n_questions"] += x["n_questions"]
    for s in acc.values():
        for m in s.values():
            for c in m.values():
                c.pop("ids")
                n = c["n_questions"]
                c["f1"], c["contains"] = round(c["f1"] / n, 4), round(c["contains"] / n, 4)
    return acc


def winner(tab: dict, names) -> str:
    """Best mean edits F1 over the students."""
    return max(names, key=lambda s: sum(m["edits"]["f1"] for m in tab[s].values()) / len(tab[s]))


def meets_target(cells: dict) -> bool:
    """The issue's target for one setting: for every student, passage + edits scores at least as well
    as the passage alone, and both beat base (token F1)."""
    return all(m["edits"]["f1"] >= m["passage"]["f1"] > m["base"]["f1"] for m in cells.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m"])
    ap.add_argument("--offset", type=int, default=300, help="first passage (>= 300: the recipe-tuning range)")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--only", nargs="*", help="run just these settings (by name, from any stage)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "sweep"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    rows = [json.loads(x) for x in rows_path.read_text().splitlines()] if rows_path.exists() else []
    done = {row_key(r["params"], r["model"], r["context_id"], r["condition"]) for r in rows}
    contexts = squad_subset(args.offset, args.limit)
    students: dict = {}
    settings = dict(STAGE1)
    if not args.only or set(args.only) & set(STAGE1):
        for name, s in STAGE1.items():
            if not args.only or name in args.only:
                run_setting(name, s, args.models, contexts, out, done, students)
    ids = {c.context_id for c in contexts}
    cur = lambda: [r for r in map(json.loads, rows_path.read_text().splitlines()) if r["context_id"] in ids]
    win = winner(table(cur(), settings), [n for n in STAGE1 if n in table(cur(), settings)])
    for stage in (stage2(STAGE1[win]), stage3(STAGE1[win])):
        settings.update(stage)
        for name, s in stage.items():
            if not args.only or name in args.only:
                run_setting(name, s, args.models, contexts, out, done, students)
    tab = table(cur(), settings)
    print(json.dumps({"passages": [args.offset, args.offset + args.limit], "stage1_winner": win,
                      "settings": {n: settings[n] for n in tab}, "table": tab,
                      "best_by_edits_f1": winner(tab, list(tab)),
                      "meet_target": [n for n in tab if meets_target(tab[n])]}, indent=1))


if __name__ == "__main__":
    main()
