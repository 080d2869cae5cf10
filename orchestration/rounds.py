"""The parts of one `seal train` round, in the order the recipe (`train.py`) calls them: the
teacher's version at a step, the edit slots it wants, the students' jobs, the rewards, and the
ReST^EM update. Each part is idempotent on the run folder, so a resumed round redoes nothing."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from core import domains
from core import rewards as R
from core.contexts import Context
from core.jobs import StudentJob, job_kind
from core.models import trim_cpu_memory
from core.queue import Job
from core.records import SelfEdit, StudentResult
from core.runs import append_jsonl, read_jsonl
from orchestration import report
from orchestration.keys import EditId, JobKey
from orchestration.steps import Slot, generate_edits
from orchestration.train_config import TrainConfig


def teacher_at(cfg: TrainConfig, run: Path, step: int) -> tuple[int, str]:
    """(version, model path) the teacher has at the start of ``step``: the newest version trained on
    the edits of an earlier round, or v0."""
    from teacher.versions import list_versions, read_manifest

    ckpt = run / "checkpoints"
    best = (0, cfg.teacher.model)
    for v in list_versions(ckpt):
        if read_manifest(ckpt / f"v{v}")["round"] < step and v > best[0]:
            best = (v, str(ckpt / f"v{v}"))
    return best


def version_of_round(run: Path, r: int) -> dict | None:
    """Manifest of the version trained on round ``r``'s edits, if it was saved."""
    from teacher.versions import list_versions, read_manifest

    for v in list_versions(run / "checkpoints"):
        m = read_manifest(run / "checkpoints" / f"v{v}")
        if m["round"] == r:
            return m
    return None


def wanted_edits(cfg: TrainConfig, r: int, version: int, ctxs: list[Context], heldout: list[Context]) -> list[Slot]:
    """The edit slots the step needs; ids are stable, so resume reuses them."""
    from teacher.prompts import template_of

    k_eval = cfg.eval.k if cfg.eval.sampled else 1
    out = [Slot(str(EditId.heldout(version, c.context_id, i)), c, "heldout", i) for c in heldout for i in range(k_eval)]
    out += [Slot(str(EditId.train(r, c.context_id, i)), c, "train", i, template_of(cfg.teacher, i))
            for c in ctxs for i in range(cfg.edits_per_context)]
    return out


def step_jobs(cfg: TrainConfig, students, r: int, version: int, wanted, heldout: list[Context],
              edits: dict[str, SelfEdit]) -> list[Job]:
    """Every student's jobs of the step: the reference conditions (the held-out ones once per run;
    each training context's fixed recipe, for its gains), and one job per wanted edit, carrying its
    text and the version that wrote it (async rounds: an older one)."""
    domain = domains.get(cfg.data.domain)
    # A training context's jobs feed only its rewards: under the loglik signal they need no answers
    # (generating them cost most of an adaptation's scoring). Held-out contexts always answer, for F1.
    loglik_only = cfg.reward.signal == R.Signal.loglik
    train_ctxs = list({w.context.context_id: w.context for w in wanted if w.purpose == "train"}.values())
    refs = [(c, cond, True) for c in heldout for cond in domain.REFERENCE] if r == 0 else []  # once per run
    if cfg.reward.baseline == "reference":
        refs += [(c, domain.REFERENCE[1], not loglik_only) for c in train_ctxs]
    jobs = []
    for _, s in students:
        kind = job_kind(s.model)
        # the adaptation seed travels with the job: a worker never reads it from shared state
        for c, cond, answer in refs:
            job = StudentJob(domain.NAME, cond, (c,), ("",), seed=s.train.seed, answer=answer)
            jobs.append(Job(str(JobKey.reference(cond, c.context_id, s.model)), kind, job, version, r))
        for w in wanted:
            e, train = edits[w.edit_id], w.purpose == "train"
            job = StudentJob(domain.NAME, "edit" if train else "heldout", (w.context,), (e.text,), edit_id=w.edit_id,
                             sample=w.sample, seed=s.train.seed, answer=not (train and loglik_only))
            jobs.append(Job(str(JobKey.of_edit(w.edit_id, s.model)), kind, job, e.teacher_version, r))
    return jobs


class Prefetch(threading.Thread):
    """async_rounds: writes round r+1's training edits with the current teacher version while the
    students score round r (one step off-policy, as verl and OpenRLHF do). Edits are appended to
    edits.jsonl as they come, so a crash loses at most a chunk; the next step reuses them by id."""

    def __init__(self, *args):
        super().__init__(daemon=True, name="prefetch-edits")
        self.args, self.error = args, None

    def run(self) -> None:
        try:
            generate_edits(*self.args)
        except BaseException as e:  # re-raised in the driver thread by finish()
            self.error = e

    def finish(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


def reward_round(cfg: TrainConfig, run: Path, r: int, students, wanted,
                 results: dict[str, StudentResult]) -> tuple[list[str], dict]:
    """(rewarded edit ids, reward statistics) of a round's training edits. Each scored edit's gains
    over both baselines (the reference's where it ran) go to rewards.jsonl, one row per edit and
    round, written once: a resumed round reads the same stored results and gets the same rows."""
    from collections import Counter

    from core.stats import mean

    train = [w for w in wanted if w.purpose == "train"]
    rw, ref_cond = cfg.reward, domains.get(cfg.data.domain).REFERENCE[1]
    per: dict[str, dict[str, float]] = {}
    both: dict[str, dict[str, dict]] = {}
    for w in train:
        for _, s in students:
            res = results.get(str(JobKey.of_edit(w.edit_id, s.model)))
            if res is None:
                continue
            g = R.gains(res, results.get(str(JobKey.reference(ref_cond, w.context.context_id, s.model))), rw.signal)
            both.setdefault(w.edit_id, {})[s.model] = g
            if g[rw.baseline] is not None:  # a missing reference or log-likelihood: no gain, never a zero
                per.setdefault(w.edit_id, {})[s.model] = g[rw.baseline]
    meta = {w.edit_id: (w.context.context_id, w.sample) for w in train}
    gains, incomplete = R.edit_gains(per, [s.model for _, s in students], meta, rw.aggregate)
    ids = R.rewarded(rw, gains)
    done = {json.loads(x)["edit_id"] for x in read_jsonl(run / "rewards.jsonl") if json.loads(x)["round"] == r}
    kept, gain_of = set(ids), {g.edit_id: g.gain for g in gains}
    new = [json.dumps({"round": r, "edit_id": w.edit_id, "context_id": w.context.context_id, "sample": w.sample,
                       "template": w.template, "signal": rw.signal, "baseline": rw.baseline, "gains": both[w.edit_id],
                       "gain": gain_of.get(w.edit_id), "rewarded": w.edit_id in kept}, sort_keys=True)
           for w in train if w.edit_id in both and w.edit_id not in done]
    if new:
        append_jsonl(run / "rewards.jsonl", "\n".join(new))

    stats = {"rule": rw.rule, "signal": rw.signal, "baseline": rw.baseline, "edits": len(train),
             "scored": len(gains), "incomplete": len(incomplete), "rewarded": len(ids),
             "mean_gain": mean(g.gain for g in gains), "max_gain": max((g.gain for g in gains), default=None),
             "rewarded_templates": dict(Counter(w.template for w in train if w.edit_id in kept)),
             **{f"mean_gain_{b}": mean(g[b] for e in both.values() for g in e.values()) for b in ("base", "reference")}}
    return ids, stats


def update_teacher(cfg: TrainConfig, run: Path, r: int, version: int, model: str, ids: list[str],
                   stats: dict, edits: dict[str, SelfEdit]) -> dict | None:
    """Train the next version on the rewarded edits ``ids`` of round ``r``; returns its manifest
    (None: nothing to train on). With ``teacher.sft.restart`` (the default) the version is trained
    from v0 on the winners of every round up to ``r`` (rewards.jsonl, in round order); otherwise from
    the current version ``model`` on this round's. Each winner is trained under its canonical prompt
    (`SelfEdit.train_prompt`)."""
    from teacher.rest_em import SFTExample, sft_update
    from teacher.versions import list_versions, prune

    done = version_of_round(run, r)
    if done is not None or not ids:
        return done
    s = cfg.teacher.sft
    if s.restart:
        earlier = [x["edit_id"] for x in map(json.loads, read_jsonl(run / "rewards.jsonl"))
                   if x["rewarded"] and x["round"] < r]
        ids = list(dict.fromkeys(earlier + list(ids)))
    examples = [SFTExample(i, edits[i].train_prompt, edits[i].text, edits[i].chat, edits[i].finished) for i in ids]
    kept = [x for x in examples if x.finished or not s.drop_unfinished]
    if not kept:
        return None
    new = max(list_versions(run / "checkpoints"), default=0) + 1
    parent, parent_version = (cfg.teacher.model, 0) if s.restart else (model, version)
    manifest = sft_update(parent, kept, cfg.teacher, run / "checkpoints" / f"v{new}", cache=cfg.models_cache,
                          manifest={"version": new, "parent_version": parent_version, "round": r, "rewards": stats,
                                    "restart": s.restart, "dropped_unfinished": len(examples) - len(kept)})
    trim_cpu_memory()
    prune(run / "checkpoints", cfg.teacher.sft.keep_last, report.best_version(run))
    return manifest
