"""The experiment that can show a teacher learning: ReST^EM rounds, then the teacher's versions on held-out passages. Prints JSON.

Stages, in priority order, each resumable (rerun the same command after an interruption; a stage
whose runs are complete is read, not redone):

1. ``train``: ``seal train configs/rest_em_squad.yaml`` in RUN/train: training passages from the
   teacher-training range, k edits per passage explored across templates (``teacher.explore``),
   each version scored after its round on a 20-passage slice of the same range (281-300) that no
   round trains on;
2. ``heldout``: the reward student scores v0 and the last version, both greedy under the canonical
   template, on the first ``--heldout-limit`` passages of the held-out range 101-200
   (RUN/heldout-v{n}-STUDENT, `seal evaluate`, adaptation seed 0 for every condition);
3. ``reference``: the same passages with the unadapted student (base), the passage alone and the
   rule-based restatement edits of bench/restate_edits.py (RUN/heldout-ref-STUDENT);
4. ``templates``: v0 greedy under each other explored template (RUN/heldout-v0-TEMPLATE-STUDENT);
5. ``transfer``: stages 2 for the other students (``--students`` after the first).

Only stages 2-5 touch passages 101-200. ``--stages`` runs a prefix of the list (never cut 1-2).

The JSON (also written to ``--out`` after every stage): per student the paired differences
``v_last - v0``, ``v_last - v0[best template]``, ``v_last - passage`` and ``v_last - restate`` on
the gold-answer log-likelihood and on F1 (mean and 95% cluster-bootstrap interval over passages),
the held-out size, and per round the rewarded count, the reward's mean and spread, the winners'
templates, the SFT steps and loss, and the training edits' lengths, steps and cuts; the form of
each version's greedy edits on 281-300 beside the form of v0's edits under each template (did the
winners' form distil into the canonical prompt?); v0 and v_last edits for the same held-out
passages; each stage's wall time; the machine.

    python bench/rest_em.py [--run-dir bench/out/rest_em] [--heldout-limit 60] [--stages train,heldout,...]
        [--students smollm2-135m-instruct,gemma3-270m] [--out results/rest_em.json] [key=value ...]
    python bench/rest_em.py --run-dir /tmp/smoke --heldout-offset 290 --heldout-limit 2 --out /tmp/smoke.json \\
        rounds=1 contexts_per_round=2 heldout.limit=1 teacher.generation.max_new_tokens=32  # a smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path

from _common import REPO, machine_record

STAGES = ("train", "heldout", "reference", "templates", "transfer")
_QA = re.compile(r"^\s*(?:\d+[.)]\s*)?(?:question|answer|q|a)\s*[:.]", re.I)
_LISTED = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")
_WORD = re.compile(r"[a-z0-9]+")


def form(texts: list[str], passages: list[str]) -> dict:
    """How a set of edits looks: its mean lines, words per line, share of Question:/Answer: lines,
    share of numbered or bulleted lines, paragraphs (blank-line separated), and the share of its words
    found in the edit's own passage (a restatement is near 1). ``passages[i]`` is ``texts[i]``'s."""
    from core.stats import mean

    rows = []
    for text, passage in zip(texts, passages, strict=True):
        lines = [x for x in text.splitlines() if x.strip()]
        words = _WORD.findall(text.lower())
        seen = set(_WORD.findall(passage.lower()))
        rows.append({"lines": len(lines), "words_per_line": len(words) / max(len(lines), 1),
                     "qa_line_share": sum(bool(_QA.match(x)) for x in lines) / max(len(lines), 1),
                     "listed_line_share": sum(bool(_LISTED.match(x)) for x in lines) / max(len(lines), 1),
                     "paragraphs": len([p for p in re.split(r"\n\s*\n", text) if p.strip()]),
                     "passage_word_share": sum(w in seen for w in words) / max(len(words), 1)})
    return {"edits": len(rows), **{k: mean(r[k] for r in rows) for k in (rows[0] if rows else [])}}


def evaluate(cfg, teacher_model: str, student: str, run: Path, conditions: list[str], offset: int, limit: int,
             prompt: str | None = None, edits_file: str | None = None):
    """`seal evaluate` on ``limit`` passages from ``offset`` (the held-out passages: 100) with
    adaptation seed 0."""
    from omegaconf import OmegaConf

    from core.config import DataConfig
    from orchestration.evaluate import EvaluateConfig, run_evaluate
    from student.config import StudentConfig

    data = DataConfig(source=cfg.data.source, shuffle_seed=cfg.data.shuffle_seed, offset=offset, limit=limit)
    teacher = dataclasses.replace(cfg.teacher, model=teacher_model, prompt=prompt or cfg.teacher.prompt, explore=[])
    by_model = {s.model: s for s in cfg.students}
    ev = EvaluateConfig(teacher=teacher, students=[by_model.get(student, StudentConfig(model=student))], data=data,
                        conditions=conditions, edits=edits_file, workers=cfg.workers, run_dir=str(run),
                        models_cache=cfg.models_cache)
    run_evaluate(ev, OmegaConf.merge(OmegaConf.structured(EvaluateConfig), OmegaConf.structured(ev)))


def values(run: Path, condition: str, metric: str) -> dict:
    """context id -> per-question ``metric`` ('score' or 'loglik') of ``condition`` in an evaluate run."""
    from core.records import StudentResult, question_values
    from core.runs import read_jsonl

    return question_values([r for r in map(StudentResult.from_json, read_jsonl(run / "results.jsonl"))
                            if r.condition == condition], metric)


def paired(a: dict, b: dict) -> dict:
    from core.stats import paired_by_context

    d = paired_by_context(a, b)
    return {"mean": d["diff"], "lo": d["lo"], "hi": d["hi"], "contexts": d["contexts"], "questions": d["questions"]}


def rounds_summary(train: Path, rows: list[dict]) -> list[dict]:
    """Per round: rewards, winners' templates, SFT, and the training edits' lengths and cuts."""
    from core.runs import read_jsonl
    from core.stats import mean, spread
    from teacher.versions import list_versions, read_manifest

    rewards = [json.loads(x) for x in read_jsonl(train / "rewards.jsonl")]
    edits = [json.loads(x) for x in read_jsonl(train / "edits.jsonl")]
    manifests = {m["round"]: m for v in list_versions(train / "checkpoints")
                 if (m := read_manifest(train / "checkpoints" / f"v{v}")) is not None}
    out = []
    for r in rows:
        if "rewards" not in r:
            continue
        mine = [e for e in edits if e["purpose"] == "train" and e["round"] == r["round"]]
        gains = [x["gain"] for x in rewards if x["round"] == r["round"] and x["gain"] is not None]
        m = manifests.get(r["round"])
        finished = {e["edit_id"]: e["finished"] for e in mine}
        out.append({"round": r["round"], "teacher_version": r["teacher_version"], "new_version": r["new_version"],
                    "scored": r["rewards"]["scored"], "rewarded": r["rewards"]["rewarded"],
                    "rewarded_templates": r["rewards"].get("rewarded_templates"),
                    "rewarded_cut_at_max_new_tokens": sum(not finished.get(x["edit_id"], True) for x in rewards
                                                          if x["round"] == r["round"] and x["rewarded"]),
                    "reward_mean": mean(gains), "reward_spread": spread(gains) if gains else None,
                    "sft_examples": m["n_examples"] if m else None, "sft_steps": m["sft"]["steps"] if m else None,
                    "sft_loss": m["sft"]["train_loss"] if m else None,
                    "sft_dropped_unfinished": m.get("dropped_unfinished") if m else None,
                    "edit_tokens_mean": mean(e["n_tokens"] for e in mine),
                    "edits_cut": sum(not e["finished"] for e in mine), "edits": len(mine),
                    "between_round_f1": r["heldout"], "wall_s": r["wall_s"]})
    return out


def forms(train: Path, cfg) -> dict:
    """The form of each version's greedy edits on the between-round slice (281-300), and of v0's
    sampled round-0 edits under each explored template."""
    from core import domains
    from core.runs import read_jsonl

    ctx = {c.context_id: c.context for c in domains.load_data(cfg.data, "data") + domains.load_data(cfg.heldout, "heldout")}
    edits = [json.loads(x) for x in read_jsonl(train / "edits.jsonl")]
    out = {"versions_greedy_canonical": {}, "v0_sampled_by_template": {}}
    for v in sorted({e["teacher_version"] for e in edits if e["purpose"] == "heldout"}):
        mine = [e for e in edits if e["purpose"] == "heldout" and e["teacher_version"] == v]
        out["versions_greedy_canonical"][f"v{v}"] = form([e["text"] for e in mine], [ctx[e["context_id"]] for e in mine])
    for t in dict.fromkeys(e["template"] for e in edits if e["purpose"] == "train"):
        mine = [e for e in edits if e["purpose"] == "train" and e["round"] == 0 and e["template"] == t]
        out["v0_sampled_by_template"][t] = form([e["text"] for e in mine], [ctx[e["context_id"]] for e in mine])
    return out


def examples(v0_run: Path, last_run: Path, n: int = 3, chars: int = 700) -> list[dict]:
    """v0's and v_last's greedy edits for the same first ``n`` held-out passages."""
    from core.runs import read_jsonl

    def by_ctx(run):
        return {e["context_id"]: e["text"] for e in map(json.loads, read_jsonl(run / "edits.jsonl"))}

    a, b = by_ctx(v0_run), by_ctx(last_run)
    return [{"context_id": c, "v0": a[c][:chars], "v_last": b[c][:chars]} for c in list(a)[:n] if c in b]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default=str(REPO / "bench" / "out" / "rest_em"))
    p.add_argument("--students", default="smollm2-135m-instruct,gemma3-270m",
                   help="held-out students: the reward student first, then the transfer students")
    p.add_argument("--heldout-limit", type=int, default=60, help="held-out passages from 101")
    p.add_argument("--heldout-offset", type=int, default=100,
                   help="first held-out passage (shuffled index); a smoke test points it into the between-round "
                        "slice 280-299 so that it never touches 101-200")
    p.add_argument("--stages", default=",".join(STAGES), help=f"a prefix of {','.join(STAGES)}")
    p.add_argument("--out", default=str(REPO / "results" / "rest_em.json"))
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. rounds=1")
    args = p.parse_args()
    from core.contexts import SQUAD_SPLIT

    ((lo, hi),) = SQUAD_SPLIT["heldout"]
    smoke = not lo <= args.heldout_offset < hi
    if not smoke and args.heldout_offset + args.heldout_limit > hi:
        raise SystemExit(f"--heldout-offset/--heldout-limit run past the held-out passages {lo + 1}-{hi}")
    stages = args.stages.split(",")
    if stages != list(STAGES[:len(stages)]):
        raise SystemExit(f"--stages must be a prefix of {','.join(STAGES)} (stages run in priority order)")

    from core.config import load_config
    from orchestration.train import TrainConfig, run_train, teacher_at

    root = Path(args.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    cfg, resolved = load_config(TrainConfig, REPO / "configs" / "rest_em_squad.yaml",
                                [f"run_dir={root / 'train'}", *args.overrides])
    os.chdir(REPO)  # the config's data paths are relative to the repository root
    students = args.students.split(",")
    reward_student = students[0]
    times_path = root / "stage_wall_s.json"
    wall = json.loads(times_path.read_text()) if times_path.exists() else {}
    out: dict = {"name": "rest_em", "page": "docs/results.md#rest-em-on-squad",
                 "command": "python bench/rest_em.py " + " ".join(sys.argv[1:]), "machine": machine_record(),
                 "teacher": cfg.teacher.model,
                 "reward_student": reward_student, "canonical_template": cfg.teacher.prompt,
                 "explore": list(cfg.teacher.explore),
                 "reward": {"rule": cfg.reward.rule, "margin": cfg.reward.margin, "baseline": cfg.reward.baseline,
                            "signal": cfg.reward.signal},
                 "sft_restart": cfg.teacher.sft.restart, "heldout_offset": args.heldout_offset,
                 "smoke_test_outside_101_200": smoke, "stages_done": []}

    def stage(name: str, fn) -> None:
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the runs' tables go to stderr, the JSON to stdout
            fn()
        wall[name] = round(wall.get(name, 0.0) + time.perf_counter() - t0, 1)
        times_path.write_text(json.dumps(wall, indent=1))
        out["stages_done"].append(name)
        summarize(out, cfg, root, students, wall)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")

    stage("train", lambda: run_train(cfg, resolved))
    last, last_model = teacher_at(cfg, root / "train", cfg.rounds + 1)
    runs = heldout_runs(cfg, root, students, last)
    at, n = args.heldout_offset, args.heldout_limit
    restate = root / f"restate_{at}_{n}.json"

    def heldout(s: str) -> None:
        evaluate(cfg, cfg.teacher.model, s, runs[s]["v0"], ["teacher"], at, n)
        if last:
            evaluate(cfg, last_model, s, runs[s]["v_last"], ["teacher"], at, n)

    def reference() -> None:
        from restate_edits import main as write_restatements

        if not restate.exists():
            write_restatements(["--out", str(restate), "--offset", str(at), "--limit", str(n)])
        evaluate(cfg, cfg.teacher.model, reward_student, runs[reward_student]["ref"], ["base", "passage", "file"],
                 at, n, edits_file=str(restate))

    def templates() -> None:
        for t in cfg.teacher.explore:
            if t != cfg.teacher.prompt:
                evaluate(cfg, cfg.teacher.model, reward_student, runs[reward_student][t], ["teacher"], at, n, prompt=t)

    steps = {"heldout": lambda: heldout(reward_student), "reference": reference, "templates": templates,
             "transfer": lambda: [heldout(s) for s in students[1:]]}
    for name in stages[1:]:
        stage(name, steps[name])
    print(json.dumps(out, indent=1))


def heldout_runs(cfg, root: Path, students: list[str], last: int) -> dict:
    """student -> what -> its `seal evaluate` run folder on the held-out passages."""
    tag = {s: s.split("/")[-1] for s in students}
    return {s: {"v0": root / f"heldout-v0-{tag[s]}", "v_last": root / f"heldout-v{last}-{tag[s]}",
                "ref": root / f"heldout-ref-{tag[s]}",
                **{t: root / f"heldout-v0-{t}-{tag[s]}" for t in cfg.teacher.explore if t != cfg.teacher.prompt}}
            for s in students}


def summarize(out: dict, cfg, root: Path, students: list[str], wall: dict) -> None:
    """Fill ``out`` with what the stages run so far have on disk (see the module docstring)."""
    from core.runs import read_jsonl
    from orchestration.train import teacher_at

    train, reward_student = root / "train", students[0]
    last, _ = teacher_at(cfg, train, cfg.rounds + 1)
    runs = heldout_runs(cfg, root, students, last)
    out["rounds"] = rounds_summary(train, [json.loads(x) for x in read_jsonl(train / "metrics.jsonl")])
    out["form"] = forms(train, cfg)
    out["v_last"] = last
    out["wall_s"] = wall
    touched = sorted(str(r.relative_to(root)) for by in runs.values() for r in by.values()
                     if (r / "results.jsonl").exists())
    out["smoke_runs" if out["smoke_test_outside_101_200"] else "runs_on_heldout_101_200"] = touched
    out["paired"], out["values"] = {}, {}
    for s in students:
        at = runs[s]
        if not (at["v0"] / "results.jsonl").exists() or not last:
            continue
        got = {m: {k: values(r, "teacher", m) for k, r in at.items() if k not in ("ref",) and (r / "results.jsonl").exists()}
               for m in ("loglik", "score")}
        if (at["ref"] / "results.jsonl").exists():
            for m in got:
                got[m] |= {c: values(at["ref"], c, m) for c in ("base", "passage")}
                got[m]["restate"] = values(at["ref"], "file", m)
        if "v_last" not in got["loglik"]:
            continue
        means = {k: (sum(x for v in d.values() for x in v if x is not None) /
                     max(1, sum(x is not None for v in d.values() for x in v))) for k, d in got["loglik"].items()}
        v0_templates = ["v0"] + [t for t in cfg.teacher.explore if t in got["loglik"]]
        best = max(v0_templates, key=lambda k: means[k])  # chosen on these passages: favours the baseline
        pairs = {"v_last - v0": "v0", f"v_last - v0[best template: {best if best != 'v0' else cfg.teacher.prompt}]": best,
                 "v_last - passage": "passage", "v_last - restate": "restate"}
        out["paired"][s] = {name: {("f1" if m == "score" else m): paired(got[m]["v_last"], got[m][b])
                                   for m in ("loglik", "score")}
                            for name, b in pairs.items() if b in got["loglik"]}
        out["values"][s] = {k: {"loglik_mean": means[k], "questions": sum(len(v) for v in d.values()),
                                "passages": len(d)} for k, d in got["loglik"].items()}
        if s == reward_student:
            out["heldout"] = {"passages": len(got["loglik"]["v0"]),
                              "questions": sum(len(v) for v in got["loglik"]["v0"].values())}
            out["examples"] = examples(at["v0"], at["v_last"])
    target = out["paired"].get(reward_student, {}).get("v_last - v0", {}).get("loglik")
    out["target_met"] = None if target is None or out["smoke_test_outside_101_200"] else target["lo"] > 0
    out["power_note"] = ("about 0.1 nats of mean gold-answer log-likelihood is the smallest gain 60 held-out "
                         "passages resolve; a smaller difference whose interval spans 0 is noise")




if __name__ == "__main__":
    main()
