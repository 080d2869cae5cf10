"""Metrics of `seal train`: held-out scores per teacher version, the console tables, optional loggers.

Accuracy is the grader's mean over every held-out question (each edit's verdicts pooled), and every
figure carries its number of questions: on a few contexts the spread between runs is large.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from core.queue import Queue
from core.records import Purpose, StudentResult, fields_checked
from orchestration.keys import JobKey


@dataclass(frozen=True)
class RoundRow:
    """One line of metrics.jsonl: step ``round`` of `seal train`, run by teacher version
    ``teacher_version``. Student labels are the models (roles=same: ``same-model``)."""

    round: int
    teacher_version: int
    contexts: list[str]  # the step's training contexts (none at the final, evaluation-only step)
    students: dict[str, str]  # label -> the model that scored the step
    heldout: dict[str, dict]  # label -> accuracy, n_questions, n_edits, n_missing of the version's held-out edits
    jobs: dict  # the step's jobs: done, dead, stale, results, redelivered, dead_reasons
    student_wait_s: float  # seconds the driver waited for the students
    wall_s: float
    reference: dict | None = None  # step 0: label -> {reference condition: accuracy, n_questions}
    rewards: dict | None = None  # a training step: the reward statistics (`train.reward_round`)
    new_version: int | None = None  # a training step: the version its SFT saved (None: none saved)
    sft: dict | None = None  # a training step: that version's SFT statistics

    @property
    def trained(self) -> bool:
        """A training step (every step but the final, evaluation-only one)."""
        return self.rewards is not None

    def to_json(self) -> str:
        raw = asdict(self)
        if self.reference is None:
            del raw["reference"]
        if not self.trained:
            for k in ("rewards", "new_version", "sft"):
                del raw[k]
        return json.dumps(raw, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> RoundRow:
        return cls(**fields_checked(cls, line))


def read_rows(run: Path) -> list[RoundRow]:
    """The metrics rows of a `seal train` run folder (none yet: [])."""
    from core.runs import read_jsonl

    return [RoundRow.from_json(x) for x in read_jsonl(run / "metrics.jsonl")]


def _pooled(results: list[StudentResult]) -> dict:
    scores = [v.score for r in results for v in r.verdicts]
    return {"accuracy": sum(scores) / len(scores) if scores else None, "n_questions": len(scores)}


def heldout_scores(students, wanted, results: dict[str, StudentResult]) -> dict:
    """student label -> pooled accuracy of the teacher's held-out edits (missing: dead or stale jobs)."""
    out = {}
    for label, s in students:
        keys = [str(JobKey.of_edit(w.edit_id, s.model)) for w in wanted if w.purpose == Purpose.heldout]
        got = [results[k] for k in keys if k in results]
        out[label] = {**_pooled(got), "n_edits": len(got), "n_missing": len(keys) - len(got)}
    return out


def reference_scores(students, heldout, results: dict[str, StudentResult], conditions=("base", "passage")) -> dict:
    """student label -> {condition: score} for the domain's reference conditions: the unadapted
    student, and the domain's fixed recipe (knowledge: trained on each passage; ARC: default_ttt)."""
    return {label: {cond: _pooled([results[k] for c in heldout if (k := str(JobKey.reference(cond, c.context_id, s.model)))
                                   in results]) for cond in conditions} for label, s in students}


def job_counts(q: Queue, keys: set[str], n_results: int) -> dict:
    rows = [j for j in q.jobs() if j["key"] in keys]
    counts = {state: sum(j["state"] == state for j in rows) for state in ("done", "dead", "stale")}
    dead = {j["key"]: j["last_error"] for j in rows if j["state"] == "dead"}
    return {**counts, "results": n_results, "redelivered": sum(j["attempts"] > 1 for j in rows), "dead_reasons": dead}


def mean_heldout(row: RoundRow) -> float | None:
    accs = [s["accuracy"] for s in row.heldout.values() if s["accuracy"] is not None]
    return sum(accs) / len(accs) if accs else None


def best_version(run: Path) -> int | None:
    """The trained version (>= 1) with the best mean held-out accuracy so far, for retention."""
    scored = [(mean_heldout(r), r.teacher_version) for r in read_rows(run) if r.teacher_version >= 1]
    scored = [s for s in scored if s[0] is not None]
    return max(scored)[1] if scored else None


def _fmt(x: float | None) -> str:
    return "   n/a" if x is None else f"{x:6.3f}"


def _width(labels, least: int) -> int:
    """A column wide enough for every label in full (a folder student is a long path)."""
    return max([least, *map(len, labels)])


def table_header(labels: list[str]) -> str:
    w = _width(labels, 18)
    cols = "".join(f" {name:>{w}}" for name in labels)
    return f"{'round':>5} {'teacher':>7}{cols} {'scored':>6} {'rewarded':>8} {'mean gain':>9} {'dead':>4} {'wall s':>7}"


def table_line(labels: list[str], row: RoundRow) -> str:
    w = _width(labels, 18)
    cols = "".join(f" {_fmt(row.heldout[name]['accuracy']):>{w}}" for name in labels)
    rw = row.rewards
    scored, rewarded, gain = (rw["scored"], rw["rewarded"], _fmt(rw["mean_gain"])) if rw is not None else ("", "", "")
    return (f"{row.round:>5} {'v' + str(row.teacher_version):>7}{cols} {scored:>6} {rewarded:>8} {gain:>9} "
            f"{row.jobs['dead']:>4} {row.wall_s:>7}")


def final_table(cfg, labels: list[str], rows: list[RoundRow], run: Path | None = None) -> str:
    """Held-out accuracy per student: the reference conditions, teacher v0 and teacher v_last (one
    column when no version was trained), with counts; and, given the run folder, the paired
    differences v_last - v0 and v_last - passage."""
    from core import domains

    domain = domains.get(cfg.data.domain)
    first, last = rows[0], rows[-1]
    teachers = [first] if last.teacher_version == first.teacher_version else [first, last]
    grader = domain.GRADER or cfg.students[0].grader
    head = [*domain.REFERENCE, *(f"teacher v{row.teacher_version}" for row in teachers)]
    w = _width(labels, 24)
    lines = [f"\nHeld-out accuracy ({grader} grader, mean over questions; n = questions behind each figure)",
             f"{'student':<{w}} " + " ".join(f"{h:>12}" for h in head)]
    for name in labels:
        ref, cells = first.reference[name], []
        for cell in (*(ref[c] for c in domain.REFERENCE), *(row.heldout[name] for row in teachers)):
            cells.append(f"{_fmt(cell['accuracy']).strip()} (n={cell['n_questions']})")
        lines.append(f"{name:<{w}} " + " ".join(f"{c:>12}" for c in cells))
    if run is not None:
        lines += paired_lines(paired_heldout(run, rows, domain.REFERENCE[1]), grader)
    if cfg.heldout.source in ("demo", "synthetic"):
        lines.append("This is a demonstration on built-in data written for it, with tiny models, not a benchmark.")
    return "\n".join(lines)


def paired_heldout(run: Path, rows: list[RoundRow], reference: str) -> dict:
    """student label -> {'v_last - v0' and 'v_last - <reference>': {'score': ..., 'loglik': ...}}: the
    paired differences on the held-out questions (`stats.paired_by_context`: a cluster bootstrap over
    contexts), from results.jsonl. v_last is the final version, not the best one; with
    ``eval.sampled`` each question's value is its mean over the version's edits."""
    from core.records import question_values
    from core.runs import read_jsonl
    from core.stats import paired_by_context

    results = [(JobKey.parse(r.key), r) for r in map(StudentResult.from_json, read_jsonl(run / "results.jsonl"))]
    first, last = rows[0], rows[-1]

    def values(pick: Callable[[JobKey], bool], model: str, metric: str) -> dict:
        return question_values([r for k, r in results if k.model == model and pick(k)], metric)

    out = {}
    name = f"v{last.teacher_version}"
    for label, model in first.students.items():
        out[label] = {}
        for metric in ("score", "loglik"):
            v0 = values(lambda k: k.heldout_version == first.teacher_version, model, metric)
            vl = values(lambda k: k.heldout_version == last.teacher_version, last.students[label], metric)
            ref = values(lambda k: k.condition == reference, model, metric)
            if last.teacher_version != first.teacher_version:  # else there is nothing to compare
                out[label].setdefault(f"{name} - v0", {})[metric] = paired_by_context(vl, v0)
            out[label].setdefault(f"{name} - {reference}", {})[metric] = paired_by_context(vl, ref)
    return out


def paired_lines(paired: dict, grader: str) -> list[str]:
    """The paired differences of `paired_heldout` as table lines."""
    from core.stats import fmt_paired

    lines = [f"\nPaired differences on the held-out questions: mean [95% cluster-bootstrap interval over "
             f"contexts] (contexts, questions); {grader} score and gold-answer log-likelihood"]
    w = _width(paired, 24)
    for label, pairs in paired.items():
        for what, d in pairs.items():
            lines.append(f"{label:<{w}} {what:<16} {grader}: {fmt_paired(d['score'])}   "
                         f"loglik: {fmt_paired(d['loglik'])}")
    return lines


def machine_line(cfg, run: Path) -> str:
    """Which kind of machine the run's figures come from, and the dtypes they were computed in:
    with ``dtype: auto`` the numbers differ between a CPU that runs bf16 and one that does not."""
    from core.models import machine

    now = machine()

    def dtype(setting: str) -> str:
        return f"{now['dtype_auto']} (auto)" if setting == "auto" else setting

    yes = {True: "yes", False: "no"}
    line = (f"Machine: {now['cpu']}, {now['cores']} cores, AVX512-BF16 {yes[now['avx512_bf16']]}, torch CPU bf16 "
            f"{yes[now['torch_cpu_bf16']]}{', GPU ' + now['gpu'] if now['gpu'] else ''}; teacher dtype "
            f"{dtype(cfg.teacher.generation.dtype)}, student dtype "
            + ", ".join(sorted({dtype(s.train.dtype) for s in cfg.students})))
    try:
        started = json.loads((run / "manifest.json").read_text()).get("machine")
    except (OSError, json.JSONDecodeError):
        started = None
    if started is not None and started != now:
        line += "\nWarning: this run was started on another kind of machine; its figures mix the two."
    return line


def open_logger(name: str, run: Path) -> Callable[[RoundRow], None]:
    """A function that sends one metrics row to TensorBoard or Weights & Biases (or nowhere)."""
    if name == "none":
        return lambda row: None

    def scalars(row: RoundRow) -> dict[str, float]:
        out = {f"heldout/{s}": v["accuracy"] for s, v in row.heldout.items() if v["accuracy"] is not None}
        if row.trained:
            out["rewards/rewarded"] = row.rewards["rewarded"]
        return out

    if name == "tensorboard":  # the package's presence was checked with the config
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run / "tensorboard"))

        def log_tb(row):
            for k, v in scalars(row).items():
                writer.add_scalar(k, v, row.round)
            writer.flush()
        return log_tb
    import wandb

    wb = wandb.init(project="seal-decoupled", name=run.name, dir=str(run), resume="allow", id=run.name)
    return lambda row: wb.log(scalars(row), step=row.round)
