"""Helpers shared by the bench scripts: the repo on sys.path, the SQuAD subset and its restatement edits."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# vLLM logs to stdout unless told otherwise; the benches print their JSON there.
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def shared(*parts: str) -> Path:
    """A path in the shared folder: beside the checkout (../shared, as on the development machines),
    else inside it (shared/, copied into a tree sent to a machine that has no ../shared)."""
    for root in (REPO.parent / "shared", REPO / "shared"):
        if root.joinpath(*parts).exists():
            return root.joinpath(*parts)
    return REPO.parent.joinpath("shared", *parts)


SQUAD = shared("data", "squad", "squad_val.json")


def squad_subset(offset: int, limit: int, path: Path = SQUAD):
    """Standard SQuAD subset (random.Random(42) shuffle), passages [offset, offset + limit)."""
    from core.contexts import load_contexts

    return load_contexts(str(path), shuffle_seed=42, offset=offset, limit=limit)


def restatement(ctx) -> str:
    """The deterministic restatement edit of bench/restate_edits.py (reads title and passage only)."""
    from restate_edits import make_edit  # bench/ is on sys.path: the scripts run from it

    return "\n".join(make_edit(ctx.context))


def edit_sha(text: str) -> str:
    """16 hex digits of the text's sha256: a cached row is reused only for the same edit."""
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def machine_record() -> dict:
    """`core.models.machine` with the kind docs/results.md names machines by (the CPU
    family and whether `dtype: auto` is bf16 there, e.g. EPYC-BF16, Xeon-fp32) and the thread count."""
    import torch

    from core.models import machine

    m = machine()
    family = next((f for f in ("EPYC", "Xeon") if f in m["cpu"]), m["cpu"].split()[0] if m["cpu"] else "CPU")
    return {"kind": f"{family}-{'BF16' if m['dtype_auto'] == 'bf16' else 'fp32'}", **m,
            "threads": torch.get_num_threads()}


def config_for(model: str, overrides: dict):
    """The student's config under the default recipe with ``overrides`` ({'train.epochs': 1}), checked."""
    from student.config import StudentConfig

    cfg = StudentConfig(model=model)
    for k, v in overrides.items():
        section, _, name = k.partition(".")
        if not hasattr(cfg, section) or not hasattr(getattr(cfg, section), name):
            raise SystemExit(f"--set {k}: no such student config field (use e.g. train.learning_rate, lora.r)")
        setattr(getattr(cfg, section), name, v)
    cfg.train.check()
    cfg.lora.check()
    return cfg


def recipe_of(cfg) -> dict:
    """Every setting that changes an adaptation's result, resolved (the student's own learning rate,
    what dtype 'auto' means on this machine); not the pass size or group, which change only speed."""
    import json
    from dataclasses import asdict

    from core.models import machine
    from student.config import learning_rate_of

    train = {k: v for k, v in asdict(cfg.train).items() if k != "pass_tokens"}
    train["learning_rate"] = learning_rate_of(cfg)
    if train["dtype"] == "auto":
        train["dtype"] = machine()["dtype_auto"]
    return json.loads(json.dumps({"train": train, "lora": asdict(cfg.lora)}))


def cached_adaptations(model: str, todo: list[dict], path: Path, overrides: dict, group: int = 8) -> list[dict]:
    """Adapt ``model`` once per item of ``todo`` and score it, caching one JSON row per item in ``path``.

    An item is {'id': unique str, 'ctx': Context, 'edit': str, 'train_as': 'passage' | 'edit',
    'seed': int or None (the student's), 'answer': False to score only log-likelihoods (F1 None), ...}; its row holds the item's other fields, per-question
    F1 and gold-answer log-likelihood (adapted and base), the training steps and tokens, and the
    edit's length. The student runs its default recipe with ``overrides``; a row is reused only under
    the same resolved recipe (`recipe_of`; rows of other recipes stay in the file) and the same edit
    text; a line torn by a kill is redone. Items run in groups of ``group`` adaptations (results do
    not depend on it)."""
    import json
    import time

    cfg = config_for(model, overrides)
    recipe = recipe_of(cfg)
    rows: dict[str, dict] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r["recipe"] == recipe:
            rows[r["id"]] = r
    want = {t["id"]: edit_sha(t["edit"]) for t in todo}
    asks = {t["id"] for t in todo if t.get("answer", True)}  # a row without answers serves no F1
    have = {i: r for i, r in rows.items()
            if i in want and r.get("edit_sha") == want[i] and (r.get("answered", True) or i not in asks)}
    left = [t for t in todo if t["id"] not in have]
    if left:
        from core.domains import knowledge
        from core.jobs import StudentJob
        from student.model import Student
        from student.scoring import Baselines, adapt_and_score_many, make_grader

        st = Student(cfg)
        base = Baselines(st, make_grader("f1"), knowledge)
        t0 = time.perf_counter()
        for at in range(0, len(left), group):
            part = left[at:at + group]
            jobs = [(t["id"], StudentJob("knowledge", t["train_as"], (t["ctx"],), (t["edit"],), seed=t.get("seed"),
                                         answer=t.get("answer", True))) for t in part]
            results = adapt_and_score_many(st, base, jobs)
            with path.open("a") as f:
                for t, r in zip(part, results):
                    if isinstance(r, Exception):
                        raise r
                    b = base.get(t["ctx"])[0]
                    extra = {k: v for k, v in t.items() if k not in ("ctx", "edit", "train_as", "answer")}
                    row = {**extra, "context_id": t["ctx"].context_id, "recipe": recipe,
                           "f1": [v.score for v in r.verdicts], "loglik": [v.loglik for v in r.verdicts],
                           "base_f1": [v.score for v in b], "base_loglik": [v.loglik for v in b],
                           "steps": r.train["steps"], "real_tokens": r.train["real_tokens"], "timings": r.timings,
                           "edit_chars": len(t["edit"]), "edit_sha": want[t["id"]], "answered": t["id"] in asks}
                    f.write(json.dumps(row) + "\n")
                    have[t["id"]] = row
            print(f"  {model}: {min(at + group, len(left))}/{len(left)} adaptations, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)  # stdout is the JSON
    return [have[t["id"]] for t in todo]
