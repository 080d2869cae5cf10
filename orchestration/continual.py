"""`seal continual`: the paper's forgetting experiment. A sequence of contexts is adapted in turn, each
on top of the previous adaptations, and after every step the student is scored on every context.

Row i of the matrix is the accuracy on each context after adapting on contexts 0..i (row "base":
before any). The paper merged each LoRA into the weights before the next; ``merge: true`` does that,
``merge: false`` keeps training one adapter. Entries above the diagonal are contexts not adapted on
yet. Written: continual.jsonl (one row per step, as it finishes), continual.json (the matrix) and
continual.png (a heatmap).

Resume: finished steps are not scored again, but their adaptations are replayed (same seeds, so the
same weights) to rebuild the model the next step starts from; training is the cheap part here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

from core import domains
from core.catalog import cache_dir, check_model
from core.config import ConfigError, DataConfig, at
from core.edits import edits_for
from core.records import Purpose
from core.runs import append_jsonl, open_run, read_jsonl, write_atomic
from student.config import StudentConfig
from teacher.config import TeacherConfig


@dataclass
class ContinualConfig:
    """Config of `seal continual` (configs/continual_demo.yaml)."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """Writes one greedy edit per context when ``edits: teacher``."""
    student: StudentConfig = field(default_factory=lambda: StudentConfig(model="gemma3-270m"))
    data: DataConfig = field(default_factory=lambda: DataConfig(offset=20, limit=5))
    """The contexts, adapted in this order."""
    edits: str = "teacher"
    """'teacher' (the teacher's greedy edit), 'passage' (the passage alone), or a SEAL-format edits file."""
    merge: bool = True
    """Merge each step's LoRA into the weights before the next (the paper); false: train one adapter on."""
    run_dir: Optional[str] = None
    """Run folder; default runs/continual-<timestamp>. An existing folder with the same config resumes."""
    models_cache: Optional[str] = None
    """Folder of materialised built-in models (default: $SEAL_MODEL_CACHE or the user cache dir)."""

    def check(self, key: str = "") -> None:
        """Every value and every model used, before any work (the teacher's only with edits=teacher)."""
        self.teacher.check(at(key, "teacher"))
        self.student.check(at(key, "student"))
        self.data.check(at(key, "data"))
        root = cache_dir(self.models_cache)
        check_model(self.student.model, at(key, "student.model"), root)
        if self.edits == "teacher":
            check_model(self.teacher.model, at(key, "teacher.model"), root)


def step_edits(cfg: ContinualConfig, contexts) -> list[str]:
    if cfg.edits == "passage":
        return [""] * len(contexts)  # the passage is appended as a training sequence
    if cfg.edits != "teacher":
        by_ctx = edits_for(contexts, cfg.edits)
        return [by_ctx[c.context_id][0] for c in contexts]
    from orchestration.keys import EditId
    from teacher.transformers_backend import make_backend
    from teacher.writer import WantedEdit, write_edits

    backend = make_backend(cfg.teacher.model, cfg.teacher, cache=cfg.models_cache)
    out: dict[str, str] = {}
    try:
        write_edits(backend, cfg.teacher, domains.get(cfg.data.domain),
                    [WantedEdit(str(EditId(c.context_id)), c, Purpose.generate, 0) for c in contexts], out,
                    lambda rows, _: out.update((w.edit_id, g.text) for w, _, g in rows), greedy=lambda _: True)
    finally:
        backend.close()
    return [out[c.context_id] for c in contexts]


def heatmap(matrix: list[list[float]], row_labels: list[str], col_labels: list[str], grader: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(col_labels) + 2.5, 0.7 * len(row_labels) + 2))
    im = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=max(0.05, max(max(r) for r in matrix)))
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 * im.norm.vmax else "black",
                    fontsize=8)
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
    ax.set_title("Continual adaptation: accuracy on each context after each step")
    ax.set_xlabel("context scored (in adaptation order)")
    ax.set_ylabel("after adapting on contexts up to")
    fig.colorbar(im, ax=ax, label=f"accuracy ({grader}, 0-1, mean over the context's questions)")
    fig.tight_layout()
    return fig


def run_continual(cfg: ContinualConfig, resolved) -> dict:
    from core.domains.sequences import edit_to_sequences
    from student.model import Student
    from student.scoring import make_grader, score_context
    from teacher.writer import check_prompts

    cfg.check()
    d = cfg.data
    contexts = domains.load_data(d, "data")
    if len(contexts) < 2:
        raise ConfigError(f"data gives {len(contexts)} context(s); continual mode needs a sequence of 2 or more")
    if cfg.edits == "teacher":
        check_prompts(cfg.teacher, d.domain, cfg.models_cache, "teacher", {"data": contexts})
    elif cfg.edits != "passage":
        edits_for(contexts, cfg.edits)  # the file is read again by step_edits; refused here, before any work
    run = open_run("continual", cfg.run_dir, resolved)
    rows = [json.loads(x) for x in read_jsonl(run / "continual.jsonl")]
    if rows and "edits" in rows[0]:
        edits = rows[0]["edits"]
    else:
        edits = step_edits(cfg, contexts)
    student = Student(cfg.student, cache=cfg.models_cache)
    grade = make_grader(cfg.student.grader, cfg.student.judge, run / "judge_cache.json")

    def score_all() -> list[float]:
        return [score_context(student, c, grade)[1] for c in contexts]

    if not rows:  # step -1: before any adaptation; it also records the edits, so resume reuses them
        rows.append({"step": -1, "edits": edits, "scores": score_all()})
        append_jsonl(run / "continual.jsonl", json.dumps(rows[0]))
    train = cfg.student.train
    for i, (ctx, edit) in enumerate(zip(contexts, edits)):
        seqs = edit_to_sequences(ctx.title, ctx.context, edit, passage_copies=train.passage_copies,
                                 max_sequences=train.max_sequences)
        stats = student.train(list(seqs.sequences), fresh=cfg.merge or i == 0)
        if cfg.merge:
            student.merge_adapter()
        if any(r["step"] == i for r in rows):
            continue  # replayed to rebuild the weights; already scored
        row = {"step": i, "context_id": ctx.context_id, "scores": score_all(), "train": stats.__dict__}
        append_jsonl(run / "continual.jsonl", json.dumps(row))
        rows.append(row)
        print(f"after context {i + 1}/{len(contexts)}: " + " ".join(f"{x:.2f}" for x in row["scores"]))
    rows.sort(key=lambda r: r["step"])
    labels = [f"{i + 1}. {c.title[:18]}" for i, c in enumerate(contexts)]
    out = {"student": cfg.student.model, "merge": cfg.merge, "edits": cfg.edits, "grader": cfg.student.grader,
           "contexts": [c.context_id for c in contexts], "labels": labels,
           "n_questions": [len(c.questions) for c in contexts],
           "base": rows[0]["scores"], "matrix": [r["scores"] for r in rows[1:]]}
    write_atomic(run / "continual.json", json.dumps(out, indent=1))
    fig = heatmap([out["base"]] + out["matrix"], ["before any"] + labels, labels, cfg.student.grader)
    fig.savefig(run / "continual.png", dpi=120)
    print(f"matrix: {run / 'continual.json'}, heatmap: {run / 'continual.png'}")
    return out
