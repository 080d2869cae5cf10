"""`seal compare`: same-model roles (SEAL as published) against split roles, on the same budget, and
the transfer matrix; `seal report RUN_DIR` rebuilds the tables and the plot from the folders.

One compare run holds one `seal train` folder per arm, all from the same ``train`` config (same
contexts, seeds, rounds, k; only the roles and students differ):
  same/             roles=same: the student of each step is the teacher's current version
  split-<student>/  roles=split with that one student: a teacher trained with student X
and, for the transfer matrix, one `seal evaluate` folder per split arm:
  transfer-<student>/  the last teacher trained with X, scored on every student Y
report.md and report.png sit next to them. Every figure has its question count and a 95%
bootstrap interval over questions; the paired differences (v_last - v0, v_last - passage) a
cluster bootstrap over contexts.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from core.config import Choice, ConfigError, at
from core.records import StudentResult
from core.runs import open_run, read_jsonl, write_atomic
from core.stats import bootstrap_ci, fmt_paired
from orchestration.keys import JobKey
from orchestration.report import paired_heldout, read_rows
from orchestration.train import run_train, teacher_at
from orchestration.train_config import SAME, TrainConfig, prepare


class Arm(Choice):
    same = "same"
    split = "split"


@dataclass
class CompareConfig:
    """Config of `seal compare` (configs/compare_roles.yaml)."""

    train: TrainConfig = field(default_factory=TrainConfig)
    """The budget every arm shares. Its students are the split arms' students (one arm each) and the
    columns of the transfer matrix; the same arm adapts with the settings of students[0]."""
    arms: list[Arm] = field(default_factory=lambda: [Arm.same, Arm.split])
    """Which arms to run: 'same', 'split' (one split arm per student)."""
    transfer: bool = True
    """Score each split arm's last teacher on every student (the transfer matrix)."""
    run_dir: Optional[str] = None
    """Run folder; default runs/compare-<timestamp>. Rerunning resumes every arm where it stopped."""

    def check(self, key: str = "") -> None:
        """Every value and every model of the shared ``train`` config, before any work (its data and
        prompt lengths: `train.prepare`)."""
        self.train.check(at(key, "train"))
        if not self.arms or any(a not in {m.value for m in Arm} for a in self.arms):
            raise ConfigError(f"{at(key, 'arms')}={[str(a) for a in self.arms]}: use a non-empty list of "
                              f"'same' and 'split'")


def slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/"))[-48:]


def arm_configs(cfg: CompareConfig, run: Path) -> dict[str, TrainConfig]:
    arms = {}
    if "same" in cfg.arms:
        arms["same"] = dataclasses.replace(cfg.train, roles="same", students=cfg.train.students[:1],
                                           run_dir=str(run / "same"))
    if "split" in cfg.arms:
        for s in cfg.train.students:
            arms[f"split-{slug(s.model)}"] = dataclasses.replace(cfg.train, roles="split", students=[s],
                                                                 run_dir=str(run / f"split-{slug(s.model)}"))
    return arms


def run_compare(cfg: CompareConfig, resolved) -> Path:
    from omegaconf import OmegaConf

    from orchestration.evaluate import EvaluateConfig, run_evaluate

    cfg.check()
    prepare(cfg.train, "train")  # the data and prompt lengths too: every arm reruns it, inside its folder
    run = open_run("compare", cfg.run_dir, resolved)
    # Each arm's folder saves its part of the config as written (interpolations unresolved), like
    # every run folder: a ${oc.env:VAR} under train: must not reach the disk resolved.
    written = OmegaConf.to_container(resolved.train, resolve=False)
    for name, arm in arm_configs(cfg, run).items():
        print(f"\n== arm {name} ==")
        students = [w for s, w in zip(cfg.train.students, written["students"]) if any(s is a for a in arm.students)]
        run_train(arm, OmegaConf.create({**written, "roles": arm.roles, "students": students, "run_dir": arm.run_dir}))
        if cfg.transfer and name.startswith("split-"):
            _, teacher = teacher_at(arm, Path(arm.run_dir), arm.rounds + 1)
            ev = EvaluateConfig(teacher=dataclasses.replace(arm.teacher, model=teacher), students=cfg.train.students,
                                data=cfg.train.heldout, conditions=["teacher"], workers=cfg.train.workers,
                                run_dir=str(run / f"transfer-{name[len('split-'):]}"),
                                models_cache=cfg.train.models_cache)
            print(f"\n== transfer: teacher of arm {name} on every student ==")
            run_evaluate(ev, OmegaConf.merge(OmegaConf.structured(EvaluateConfig), {
                "teacher": {**written["teacher"], "model": teacher}, "students": written["students"],
                "data": written["heldout"], "conditions": ["teacher"], "workers": written["workers"],
                "run_dir": ev.run_dir, "models_cache": written["models_cache"]}))
    write_report(run)
    return run


# ----- report ----------------------------------------------------------------------------------
def arm_curves(arm_dir: Path) -> list[dict]:
    """Per student label: held-out accuracy per round with its interval, from a train folder."""
    rows = read_rows(arm_dir)
    results = {r.key: r for r in map(StudentResult.from_json, read_jsonl(arm_dir / "results.jsonl"))}
    curves: dict[str, dict] = {}
    for row in rows:
        for label, model in row.students.items():
            mine = [r for k, r in results.items()
                    if (key := JobKey.parse(k)).heldout_version == row.teacher_version and key.model == model]
            scores = [v.score for r in mine for v in r.verdicts]
            lo, hi = bootstrap_ci(scores)
            c = curves.setdefault(label, {"student": label, "rounds": [], "accuracy": [], "ci": [], "n": []})
            c["rounds"].append(row.round)
            c["accuracy"].append(sum(scores) / len(scores) if scores else float("nan"))
            c["ci"].append((lo, hi))
            c["n"].append(len(scores))
    return list(curves.values())


def transfer_matrix(run: Path) -> tuple[list[str], list[str], dict]:
    """(trained-with names, evaluated-on names, {(X, Y): evaluate.csv row})."""
    import csv

    cells, rows_, cols = {}, [], []
    for d in sorted(run.glob("transfer-*")):
        if not (d / "evaluate.csv").is_file():
            continue
        x = d.name[len("transfer-"):]
        rows_.append(x)
        with open(d / "evaluate.csv") as f:
            for r in csv.DictReader(f):
                if r["student"] not in cols:
                    cols.append(r["student"])
                cells[(x, r["student"])] = r
    return rows_, cols, cells


def build_figure(curves_by_arm: dict[str, list[dict]], grader: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    rounds = sorted({r for curves in curves_by_arm.values() for c in curves for r in c["rounds"]})
    for arm, curves in curves_by_arm.items():
        for c in curves:
            lo = [a - ci[0] for a, ci in zip(c["accuracy"], c["ci"])]
            hi = [ci[1] - a for a, ci in zip(c["accuracy"], c["ci"])]
            student = c["student"] if c["student"] != SAME else "teacher's own version"
            ax.errorbar(c["rounds"], c["accuracy"], yerr=[lo, hi], marker="o", capsize=3,
                        label=f"{arm} / {student} (n={max(c['n'])} q.)")
    ax.set_title("Held-out accuracy by ReST^EM round: same vs split roles")
    ax.set_xlabel("ReST^EM round (teacher version after that many updates)")
    ax.set_ylabel(f"held-out accuracy ({grader}, 0-1, mean over questions)")
    ax.set_xticks(rounds)
    # below the axes: the lines of a small run often overlap wherever the legend would sit
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=1, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_report(run: Path) -> str:
    """Write report.md and report.png of a compare folder (or of a single train folder)."""
    from core.runs import MANIFEST_FILE

    command = json.loads((run / MANIFEST_FILE).read_text())["command"]
    arm_dirs = {d.name: d for d in sorted(run.iterdir()) if (d / "metrics.jsonl").is_file()} \
        if command == "compare" else {run.name: run}
    curves = {name: arm_curves(d) for name, d in arm_dirs.items()}
    grader = "grader"
    n_rounds = max((len(c["rounds"]) for cs in curves.values() for c in cs), default=0)
    lines = ["# Same vs split roles", "",
             "Held-out accuracy per round, mean over questions [95% bootstrap interval] (n = questions).", "",
             "| arm | student | " + " | ".join(f"round {r}" for r in range(n_rounds)) + " |",
             "|---|---|" + "---|" * n_rounds]
    for arm, cs in curves.items():
        for c in cs:
            cells = [f"{a:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] n={n}" for a, ci, n in zip(c["accuracy"], c["ci"], c["n"])]
            lines.append(f"| {arm} | {c['student']} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences on the held-out questions: mean [95% cluster-bootstrap interval over "
              "contexts] (contexts, questions), on the grader's score and the gold-answer log-likelihood.", "",
              "| arm | student | pair | score | loglik |", "|---|---|---|---|---|"]
    for arm, d in arm_dirs.items():
        rows = read_rows(d)
        if not rows:
            continue
        recipe = next(c for c in next(iter(rows[0].reference.values())) if c != "base")
        for label, pairs in paired_heldout(d, rows, recipe).items():
            lines += [f"| {arm} | {label} | {what} | {fmt_paired(x['score'])} | {fmt_paired(x['loglik'])} |"
                      for what, x in pairs.items()]
    lines += ["", "| arm | wall time (min) | adaptations |", "|---|---|---|"]
    for arm, d in arm_dirs.items():
        rows = read_rows(d)
        n = sum(1 for x in read_jsonl(d / "results.jsonl") if json.loads(x)["condition"] != "base")
        lines.append(f"| {arm} | {sum(r.wall_s for r in rows) / 60:.1f} | {n} |")
        first = read_jsonl(d / "results.jsonl")[:1]
        grader = json.loads(first[0])["grader"] if first else grader
    xs, ys, cells = transfer_matrix(run)
    if xs:
        lines += ["", "Transfer matrix: held-out accuracy of the last teacher trained with student X (rows), "
                  "scored on student Y (columns) [95% interval].", "",
                  "| trained with \\ scored on | " + " | ".join(ys) + " |", "|---|" + "---|" * len(ys)]
        for x in xs:
            row = [cells.get((x, y)) for y in ys]
            lines.append(f"| {x} | " + " | ".join("n/a" if c is None else
                                                   f"{float(c['accuracy']):.3f} [{float(c['ci_low']):.3f}, "
                                                   f"{float(c['ci_high']):.3f}] n={c['n_questions']}" for c in row) + " |")
    text = "\n".join(lines) + "\n"
    write_atomic(run / "report.md", text)
    fig = build_figure(curves, grader)
    fig.savefig(run / "report.png", dpi=120)
    print(text)
    print(f"report: {run / 'report.md'}, {run / 'report.png'}")
    return text
