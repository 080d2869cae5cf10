"""`seal evaluate`: one teacher applied to any list of students on a held-out set.

Per student and condition: ``base`` (no adaptation), ``passage`` (trained on the passage alone),
``teacher`` (trained on the teacher's edits: one greedy edit per context, or ``eval.k`` sampled),
and ``file`` (trained on an external SEAL-format edits file, ``edits=FILE``, scored as if a
teacher had written it). Jobs go through the same queue and workers as `seal train`, so a run
folder resumes the same way. ``seeds=[...]`` repeats every adaptation with each seed.

Accuracy is the grader's mean over all held-out questions. The interval is a 95% percentile
bootstrap over questions (each question's score averaged over seeds first); ``spread`` is the
standard deviation of the per-seed accuracies. Results: evaluate.csv and evaluate.md.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from core import domains
from core.catalog import cache_dir, check_model
from core.config import ConfigError, DataConfig, at, check_min, check_nonempty
from core.edits import edits_for
from core.queue import Queue
from core.records import Purpose, SelfEdit, StudentResult, question_values
from core.runs import open_run, read_jsonl, write_atomic
from core.stats import bootstrap_ci, fmt_paired, paired_by_context, spread
from orchestration import launch
from orchestration.dispatch import collect, evaluate_jobs, generate_edits, grouped, make_workers
from orchestration.generate import teacher_version
from orchestration.keys import EditId, JobKey
from orchestration.train_config import EvalConfig, WorkersConfig
from student.config import StudentConfig, check_students
from teacher.config import TeacherConfig
from teacher.writer import WantedEdit, check_constrain, check_prompts


def _default_students() -> list[StudentConfig]:
    return [StudentConfig(model="smollm2-135m-instruct"), StudentConfig(model="gemma3-270m")]


@dataclass
class EvaluateConfig:
    """Config of `seal evaluate` (configs/evaluate_demo.yaml)."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """``teacher.model``: a run's checkpoints/v{n} folder, a built-in name, a folder or a hub id."""
    students: list[StudentConfig] = field(default_factory=_default_students)
    """The students to evaluate (any mix of families and tokenizers)."""
    data: DataConfig = field(default_factory=lambda: DataConfig(offset=20, limit=6))
    """The held-out contexts."""
    conditions: list[str] = field(default_factory=lambda: ["base", "passage", "teacher"])
    """Any of 'base', 'passage', 'teacher', 'file' (the last needs ``edits``)."""
    edits: Optional[str] = None
    """External SEAL-format edits file for the 'file' condition (matched to contexts by title + passage)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Adaptation seeds; each repeats every adaptation (mean and spread are reported)."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Teacher edits per context: one greedy (default) or ``k`` sampled."""
    multi_passage: int = 1
    """Contexts per adaptation. 1: one adaptation per context. n > 1: the continued-pretraining
    setting, one adaptation on the edits (or passages) of n contexts at once, scored on all their
    questions (contexts are grouped in order; a last, smaller group is kept)."""
    bootstrap: int = 1000
    """Bootstrap resamples for the 95% intervals."""
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    run_dir: Optional[str] = None
    """Run folder; default runs/evaluate-<timestamp>. An existing folder with the same config resumes."""
    models_cache: Optional[str] = None
    """Folder of materialised built-in models (default: $SEAL_MODEL_CACHE or the user cache dir)."""

    def check(self, key: str = "") -> None:
        """Every value and every model, before any work."""
        check_students(self.students, at(key, "students"))
        self.teacher.check(at(key, "teacher"))
        self.data.check(at(key, "data"))
        self.eval.check(at(key, "eval"))
        self.workers.check(at(key, "workers"))
        known = conditions_of(self)
        bad = [c for c in self.conditions if c not in known]
        if bad or not self.conditions:
            raise ConfigError(f"{at(key, 'conditions')}={self.conditions}: use a non-empty list of {known} "
                              f"(data.domain={self.data.domain!r})")
        if "file" in self.conditions and not self.edits:
            raise ConfigError(f"{at(key, 'conditions')} includes 'file' but edits= is not set; pass edits=PATH to a "
                              f"SEAL-format file")
        check_min(self, key, 1, "multi_passage", "bootstrap")
        check_nonempty(self, key, "seeds")
        root = cache_dir(self.models_cache)
        if "teacher" in self.conditions:
            check_constrain(self.teacher, self.data.domain, key)
            check_model(self.teacher.model, at(key, "teacher.model"), root)
        for i, s in enumerate(self.students):
            check_model(s.model, at(key, f"students.{i}.model"), root)


def conditions_of(cfg: EvaluateConfig) -> list[str]:
    """The conditions of the config's domain: base, its fixed recipe (knowledge: 'passage'; ARC:
    'default_ttt'), the teacher's edits, and edits from a file."""
    return [*domains.get(cfg.data.domain).REFERENCE, "teacher", "file"]


def summarize(cfg: EvaluateConfig, results: dict[str, StudentResult]) -> list[dict]:
    """One row per (student, condition): accuracy (mean over seeds), 95% CI, spread, n_questions."""
    rows = []
    keys = {key: JobKey.parse(key) for key in results}
    for s in cfg.students:
        for cond in cfg.conditions:
            per_seed: dict[int, dict[str, list[float]]] = {}  # seed -> job key without seed -> scores
            for key, r in results.items():
                k = keys[key]
                if k.model != s.model or r.condition != cond:
                    continue
                per_seed.setdefault(k.seed, {})[k.without_seed()] = [v.score for v in r.verdicts]
            if not per_seed:
                continue
            # the same questions in the same order for every seed (results arrive in any order)
            scores = {seed: [x for k in sorted(got) for x in got[k]] for seed, got in per_seed.items()}
            accs = [sum(v) / len(v) for v in scores.values()]
            n = min(len(v) for v in scores.values())
            pooled = [sum(v[i] for v in scores.values()) / len(scores) for i in range(n)]
            lo, hi = bootstrap_ci(pooled, resamples=cfg.bootstrap)
            rows.append({"student": s.model, "condition": cond, "accuracy": sum(accs) / len(accs),
                         "ci_low": lo, "ci_high": hi, "spread": spread(accs), "seeds": len(per_seed),
                         "n_questions": n})
    return rows


def paired_rows(cfg: EvaluateConfig, results: dict[str, StudentResult]) -> list[dict]:
    """Per student, each edit condition against the fixed recipe and against base, and the recipe
    against base: the paired difference of the per-question values (each question's mean over seeds
    and edits), with a cluster bootstrap over contexts (`stats.paired_by_context`), on the grader's
    score and on the gold-answer log-likelihood."""
    recipe = domains.get(cfg.data.domain).REFERENCE[1]
    pairs = [(a, b) for a in ("teacher", "file", recipe) for b in (recipe, "base") if a != b]
    out = []
    for s in cfg.students:
        mine = [r for k, r in results.items() if JobKey.parse(k).model == s.model]
        for a, b in pairs:
            if not {a, b} <= set(cfg.conditions):
                continue
            row = {"student": s.model, "pair": f"{a} - {b}"}
            for metric in ("score", "loglik"):
                side = {c: question_values([r for r in mine if r.condition == c], metric) for c in (a, b)}
                row[metric] = paired_by_context(side[a], side[b], resamples=cfg.bootstrap)
            if row["score"]["questions"]:
                out.append(row)
    return out


def write_tables(run: Path, cfg: EvaluateConfig, rows: list[dict], paired: list[dict] = ()) -> str:
    csv_text = io.StringIO(newline="")
    w = csv.DictWriter(csv_text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_atomic(run / "evaluate.csv", csv_text.getvalue())
    conds = [c for c in cfg.conditions if any(r["condition"] == c for r in rows)]
    grader = domains.get(cfg.data.domain).GRADER or cfg.students[0].grader
    teacher = (f"with teacher `{cfg.teacher.model}` (version {teacher_version(cfg.teacher.model)})"
               if "teacher" in cfg.conditions else "without a teacher")
    lines = [f"Held-out accuracy ({grader} grader) {teacher} on `{cfg.data.source}`; "
             f"mean over {len(cfg.seeds)} seed(s) ± spread, [95% bootstrap interval], n = questions",
             "", "| student | " + " | ".join(conds) + " |", "|---|" + "---|" * len(conds)]
    for s in cfg.students:
        cells = []
        for c in conds:
            r = next((r for r in rows if r["student"] == s.model and r["condition"] == c), None)
            cells.append("n/a" if r is None else f"{r['accuracy']:.3f} ± {r['spread']:.3f} "
                                                   f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] n={r['n_questions']}")
        lines.append(f"| {s.model} | " + " | ".join(cells) + " |")
    if paired:
        lines += ["", f"Paired differences: mean [95% cluster-bootstrap interval over contexts] (contexts, "
                      f"questions), on the {grader} score and the gold-answer log-likelihood",
                  "", "| student | pair | score | loglik |", "|---|---|---|---|"]
        lines += [f"| {p['student']} | {p['pair']} | {fmt_paired(p['score'])} | {fmt_paired(p['loglik'])} |"
                  for p in paired]
        write_atomic(run / "paired.json", json.dumps(paired, indent=1))
    text = "\n".join(lines) + "\n"
    write_atomic(run / "evaluate.md", text)
    return text


def run_evaluate(cfg: EvaluateConfig, resolved) -> list[dict]:
    """Run (or resume) `seal evaluate`; returns the summary rows (also in evaluate.csv/.md)."""
    cfg.check()
    d = cfg.data
    contexts = domains.load_data(d, "data")
    file_edits = edits_for(contexts, cfg.edits) if "file" in cfg.conditions else {}
    if "teacher" in cfg.conditions:
        check_prompts(cfg.teacher, d.domain, cfg.models_cache, "teacher", {"data": contexts})
    run = open_run("evaluate", cfg.run_dir, resolved)
    version = teacher_version(cfg.teacher.model)
    edits = {e.edit_id: e for e in map(SelfEdit.from_json, read_jsonl(run / "edits.jsonl"))}
    if "teacher" in cfg.conditions:
        k = cfg.eval.k if cfg.eval.sampled else 1
        wanted = [WantedEdit(str(EditId.heldout(version, c.context_id, i)), c, Purpose.heldout, i)
                  for c in contexts for i in range(k)]
        generate_edits(cfg, run, 0, version, cfg.teacher.model, wanted, edits)
    by_ctx: dict[str, list[SelfEdit]] = {}
    for e in sorted(edits.values(), key=lambda e: e.sample):
        by_ctx.setdefault(e.context_id, []).append(e)
    jobs = evaluate_jobs(cfg, contexts, by_ctx, file_edits)
    keys = {j.key for j in jobs}
    exported = {json.loads(x)["key"] for x in read_jsonl(run / "results.jsonl")}
    workers = make_workers(cfg, run)
    with Queue(run / launch.QUEUE_FILE, max_attempts=cfg.workers.max_attempts) as q:
        q.put(grouped(jobs, cfg.workers.group_size))
        try:
            workers.wait(keys, desc="evaluate jobs", students=cfg.students)
        finally:
            workers.stop()
        results = collect(q, keys, run, exported)
    rows = summarize(cfg, results)
    print(write_tables(run, cfg, rows, paired_rows(cfg, results)))
    print(f"run folder: {run}")
    return rows
