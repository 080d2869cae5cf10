"""`seal adapt`: score a student on contexts under conditions base / passage / edits.

For each context: ``base`` answers without adaptation, ``passage`` trains on the passage alone,
``edits`` trains on each completion of a SEAL-format edits file (one adaptation per completion).
Rows go to ``results.jsonl`` as they finish (keyed, so a rerun on the same run_dir resumes), and
``summary.json`` holds accuracy per condition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

from core import domains
from core.catalog import cache_dir, check_model
from core.config import ConfigError, DataConfig, at, check_min
from core.contexts import Context
from core.edits import edits_for
from core.jobs import StudentJob
from core.records import StudentResult
from core.runs import append_jsonl, open_run, read_jsonl, write_atomic
from orchestration.keys import AdaptKey
from student.config import StudentConfig

CONDITIONS = ("base", "passage", "edits")


class AdaptRow(NamedTuple):
    """One row to compute: its result key (`keys.AdaptKey`), context, condition, which edit, its text."""

    key: str
    context: Context
    condition: str
    completion: int
    edit: str


@dataclass
class AdaptConfig:
    """Config of `seal adapt` (configs/adapt_demo.yaml)."""

    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    conditions: list[str] = field(default_factory=lambda: ["base", "passage"])
    """Any of 'base', 'passage', 'edits' (the last needs ``edits``)."""
    edits: Optional[str] = None
    """SEAL-format edits file: a JSON list of {title, context, completions: [str]}, matched to the
    contexts by context_id (title + passage)."""
    max_completions: Optional[int] = None
    """Use at most this many completions per context from the edits file (None = all; else 1 or more)."""
    run_dir: Optional[str] = None
    """Run folder; default runs/adapt-<timestamp>. An existing folder with the same config resumes."""
    models_cache: Optional[str] = None
    """Folder of materialised built-in models (default: $SEAL_MODEL_CACHE or the user cache dir)."""

    def check(self, key: str = "") -> None:
        """Every value and the student's model, before any work."""
        self.student.check(at(key, "student"))
        self.data.check(at(key, "data"))
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad or not self.conditions:
            raise ConfigError(f"{at(key, 'conditions')}={self.conditions}: use a non-empty list of {list(CONDITIONS)}")
        if "edits" in self.conditions and not self.edits:
            raise ConfigError(f"{at(key, 'conditions')} includes 'edits' but edits= is not set; pass edits=PATH to a "
                              f"SEAL-format file")
        check_min(self, key, 1, "max_completions")
        check_model(self.student.model, at(key, "student.model"), cache_dir(self.models_cache))


def summarize(rows: list[StudentResult], student: str, dataset: str) -> dict:
    conds: dict[str, dict] = {}
    for name in CONDITIONS:
        sel = [r for r in rows if r.condition == name]
        if not sel:
            continue
        scores = [v.score for r in sel for v in r.verdicts]
        conds[name] = {"accuracy": sum(scores) / len(scores), "n_questions": len(scores), "n_adaptations":
                       0 if name == "base" else len(sel)}
    return {"student": student, "dataset": dataset, "conditions": conds}


def format_table(summary: dict) -> str:
    lines = [f"student {summary['student']} on {summary['dataset']}",
             f"{'condition':<10} {'accuracy':>9} {'questions':>10} {'adaptations':>12}"]
    for name, c in summary["conditions"].items():
        lines.append(f"{name:<10} {c['accuracy']:>9.3f} {c['n_questions']:>10} {c['n_adaptations']:>12}")
    return "\n".join(lines)


def run_adapt(cfg: AdaptConfig, resolved) -> dict:
    """Run `seal adapt` on a parsed config; returns the summary (also written to the run folder)."""
    from core.console import Progress
    from student.model import Student
    from student.scoring import Baselines, adapt_and_score, base_result, make_grader

    cfg.check()
    d = cfg.data
    contexts = domains.load_data(d, "data")
    edits = edits_for(contexts, cfg.edits) if "edits" in cfg.conditions else {}
    run = open_run("adapt", cfg.run_dir, resolved)
    results_path = run / "results.jsonl"
    done = {r.key: r for r in map(StudentResult.from_json, read_jsonl(results_path))}

    jobs = []
    for ctx in contexts:
        for cond in cfg.conditions:
            if cond == "edits":
                comps = edits[ctx.context_id][: cfg.max_completions]
                jobs += [AdaptRow(str(AdaptKey(ctx.context_id, cond, i)), ctx, cond, i, e) for i, e in enumerate(comps)]
            else:
                jobs.append(AdaptRow(str(AdaptKey(ctx.context_id, cond)), ctx, cond, 0, ""))
    todo = [j for j in jobs if j.key not in done]
    student, grade = None, None
    for key, ctx, cond, i, edit in Progress(len(jobs), "adapt and score", "job", initial=len(jobs) - len(todo)).over(todo):
        if student is None:  # loaded lazily: a finished run resumes without loading a model
            student = Student(cfg.student, cache=cfg.models_cache)
            grade = make_grader(cfg.student.grader, cfg.student.judge, run / "judge_cache.json")
            baselines = Baselines(student, grade)
        if cond == "base":
            row = base_result(student, baselines, ctx, key)
        else:
            row = adapt_and_score(student, baselines, key, StudentJob(d.domain, cond, (ctx,), (edit,), sample=i))
        append_jsonl(results_path, row.to_json())
        done[key] = row
    summary = summarize([done[j.key] for j in jobs], cfg.student.model, d.source)
    write_atomic(run / "summary.json", json.dumps(summary, indent=1))
    print(format_table(summary))
    print(f"run folder: {run}")
    return summary
