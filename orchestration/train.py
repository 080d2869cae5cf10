"""`seal train`: the ReST^EM outer loop, teacher and students linked by the run's queue.

`Train.step(r)` is one round, top to bottom. Step r = 0 .. rounds, with teacher version v (v0 = the
configured model):
  1. generate: v writes one greedy edit per held-out context (its evaluation) and, for r < rounds,
     k sampled edits for each of this round's training contexts (fresh contexts every round, or the
     same ones with ``reuse_contexts``);
  2. enqueue one adapt job per (edit, student) -- plus base and passage on the held-out set at r = 0,
     and the reference condition on each training context with ``reward.baseline: reference``;
  3. wait while the student workers drain the jobs (`launch.py`, `ray_launch.py`);
  4. for r < rounds: gains (adapted - baseline under ``reward.signal``; the baseline is the unadapted
     student or, with ``reward.baseline: reference``, the passage-only adaptation queued in step 2;
     aggregated over students; per edit in rewards.jsonl) -> reward rule;
  5. TRL SFT on the rewarded (prompt, edit) pairs -> version v+1 in checkpoints/ (none rewarded:
     the teacher is kept as is). By default (``teacher.sft.restart``) v+1 is trained from v0 on the
     winners of every round so far; an edit sampled under an explored template (``teacher.explore``)
     is trained under the canonical ``teacher.prompt``;
  6. one row in metrics.jsonl, and a line of the console table.
Every part is idempotent, so rerunning the command on the run folder resumes where it stopped:
edits already written are reused, queued jobs are not redone, a version already saved for the
round is not retrained, and a step with a metrics row is skipped. `Train.setup` reads the run
folder once; from there the loop keeps its state (teacher version and model, edits) in memory.

async_rounds: while the students score step r, a driver thread already writes round r+1's training
edits with v (`Prefetch`), so the teacher does not idle; step r+1 then scores edits one
version old. ``max_teacher_lag`` bounds that age: the driver publishes its newest version and the
bound on the queue, and a worker drops a staler job with the reason recorded
(`core.delivery.stale_reason`).
"""


from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

from core import domains
from core import rewards as R
from core.catalog import cache_dir, checksum
from core.contexts import Context
from core.delivery import LAG_FLAG, VERSION_FLAG
from core.faults import fault
from core.models import trim_cpu_memory
from core.queue import Queue
from core.records import Purpose, SelfEdit, StudentResult
from core.runs import append_jsonl, open_run, read_jsonl
from core.stats import mean
from orchestration import launch, report
from orchestration.dispatch import collect, generate_edits, grouped, make_workers, train_jobs
from orchestration.keys import EditId, JobKey
from orchestration.train_config import Launcher, TrainConfig, contexts_of, labels, prepare, students_at
from teacher.prompts import template_of
from teacher.rest_em import SFTExample, sft_update
from teacher.versions import list_versions, prune, read_manifest
from teacher.writer import WantedEdit

__all__ = ["Train", "TrainConfig", "run_train"]


# ----- the teacher's versions and the edits a step wants -----------------------------------------
def teacher_at(cfg: TrainConfig, run: Path, step: int) -> tuple[int, str]:
    """(version, model path) the teacher has at the start of ``step``: the newest version trained on
    the edits of an earlier round, or v0."""
    ckpt = run / "checkpoints"
    best = (0, cfg.teacher.model)
    for v in list_versions(ckpt):
        if read_manifest(ckpt / f"v{v}")["round"] < step and v > best[0]:
            best = (v, str(ckpt / f"v{v}"))
    return best


def version_of_round(run: Path, r: int) -> dict | None:
    """Manifest of the version trained on round ``r``'s edits, if it was saved."""
    for v in list_versions(run / "checkpoints"):
        m = read_manifest(run / "checkpoints" / f"v{v}")
        if m["round"] == r:
            return m
    return None


def wanted_edits(cfg: TrainConfig, r: int, version: int, ctxs: list[Context],
                 heldout: list[Context]) -> list[WantedEdit]:
    """The edits the step needs; ids are stable, so resume reuses them."""
    k_eval = cfg.eval.k if cfg.eval.sampled else 1
    out = [WantedEdit(str(EditId.heldout(version, c.context_id, i)), c, Purpose.heldout, i)
           for c in heldout for i in range(k_eval)]
    out += [WantedEdit(str(EditId.train(r, c.context_id, i)), c, Purpose.train, i, template_of(cfg.teacher, i))
            for c in ctxs for i in range(cfg.edits_per_context)]
    return out


# ----- the loop ---------------------------------------------------------------------------------
class Train:
    """The ReST^EM loop of one run folder and its state between rounds."""

    def __init__(self, cfg: TrainConfig, resolved):
        self.cfg, self.resolved = cfg, resolved
        self.ahead: Prefetch | None = None  # async_rounds: the next round's edits, being written

    def setup(self) -> None:
        """Check everything, open (or resume) the run folder and start the workers."""
        cfg = self.cfg
        cfg.check()
        self.train, self.heldout = prepare(cfg)
        if cfg.teacher.threads:
            import torch

            torch.set_num_threads(cfg.teacher.threads)
        root = cache_dir(cfg.models_cache)
        fixed = cfg.students if cfg.roles == "split" else []  # roles=same: the students are the teacher's versions
        models = {"teacher": checksum(cfg.teacher.model, root),
                  **{f"student:{s.model}": checksum(s.model, root) for s in fixed}}
        seeds = {"generation": cfg.teacher.generation.seed, "sft": cfg.teacher.sft.seed,
                 **{f"student:{s.model}": s.train.seed for s in cfg.students}}
        self.run = run = open_run("train", cfg.run_dir, self.resolved, extra={"models": models, "seeds": seeds})
        self.edits = {e.edit_id: e for e in map(SelfEdit.from_json, read_jsonl(run / "edits.jsonl"))}
        self.exported = {json.loads(x)["key"] for x in read_jsonl(run / "results.jsonl")}
        self.rows = report.read_rows(run)
        self.version, self.model = teacher_at(cfg, run, len(self.rows))
        self.logger = report.open_logger(cfg.logger, run)
        self.workers = make_workers(cfg, run, ray=cfg.launcher == Launcher.ray)
        self.queue = Queue(run / launch.QUEUE_FILE, max_attempts=cfg.workers.max_attempts)
        # The ledger holds every result: a line of results.jsonl torn (and cut) or lost in a crash comes
        # back, even in a finished run whose round loop would never collect it again.
        collect(self.queue, set(self.queue.results()), run, self.exported)
        if cfg.roles == "same" and (len(cfg.students) > 1 or cfg.students[0].model != cfg.teacher.model):
            print(f"roles=same: the student is the teacher's current version, adapted with the settings of "
                  f"students[0]; the student models {[s.model for s in cfg.students]} are ignored")
        print(report.table_header(labels(cfg)))
        for row in self.rows:
            print(report.table_line(labels(cfg), row))
        self.queue.set_flag(LAG_FLAG, str(cfg.max_teacher_lag))

    def pending(self) -> range:
        """The steps without a metrics row."""
        return range(len(self.rows), self.cfg.rounds + 1)

    def step(self, r: int) -> report.RoundRow:
        """One round: generate -> jobs -> wait -> reward -> SFT -> metrics row."""
        cfg, run, t0 = self.cfg, self.run, time.perf_counter()
        version, model = self.version, self.model
        self.queue.set_flag(VERSION_FLAG, str(version))
        students = students_at(cfg, model)
        ctxs = contexts_of(cfg, self.train, r)

        # 1. generate: held-out edits of v, and this round's training edits
        wanted = wanted_edits(cfg, r, version, ctxs, self.heldout)
        generate_edits(cfg, run, r, version, model, wanted, self.edits, cfg.launcher == Launcher.ray)

        # 2. jobs: one per (edit, student), plus the reference conditions
        jobs = train_jobs(cfg, students, r, version, wanted, self.heldout, self.edits)
        self.queue.put(grouped(jobs, cfg.workers.group_size))
        keys = {j.key for j in jobs}
        if cfg.async_rounds and r + 1 < cfg.rounds:
            nxt = wanted_edits(cfg, r + 1, version, contexts_of(cfg, self.train, r + 1), [])
            self.ahead = Prefetch(cfg, run, r + 1, version, model, nxt, self.edits, cfg.launcher == Launcher.ray)
            self.ahead.start()

        # 3. wait for the students
        t_wait = time.perf_counter()
        self.workers.wait(keys, desc=f"round {r} jobs", students=[s for _, s in students])
        wait_s = round(time.perf_counter() - t_wait, 1)  # the students' side of the round, in seconds
        results = collect(self.queue, keys, run, self.exported)

        # 4. reward and 5. SFT (not after the last round: that step only evaluates)
        ids, stats, manifest = [], None, None
        if r < cfg.rounds:
            ids, stats = reward_round(cfg, run, r, students, wanted, results)
            if cfg.teacher.explore:
                won = ", ".join(f"{t} {n}" for t, n in stats["rewarded_templates"].items()) or "none"
                print(f"round {r}: rewarded edits by template: {won}")
            manifest = update_teacher(cfg, run, r, version, model, ids, stats, self.edits)
            if manifest is not None:
                self.queue.set_flag(VERSION_FLAG, str(manifest["version"]))
                fault("saved")
                self.version, self.model = manifest["version"], str(run / "checkpoints" / f"v{manifest['version']}")
            elif ids:
                print(f"round {r}: all {len(ids)} rewarded edits were cut at max_new_tokens "
                      f"(teacher.sft.drop_unfinished); the teacher stays v{version}")
            else:
                print(f"round {r}: no rewarded edit among {stats['scored']} scored; the teacher stays v{version}")
        if self.ahead is not None:
            self.ahead.finish()
            self.ahead = None

        # 6. the metrics row
        reference = (report.reference_scores(students, self.heldout, results, domains.get(cfg.data.domain).REFERENCE)
                     if r == 0 else None)
        row = report.RoundRow(
            round=r, teacher_version=version, contexts=[c.context_id for c in ctxs],
            students={label: s.model for label, s in students}, heldout=report.heldout_scores(students, wanted, results),
            jobs=report.job_counts(self.queue, keys, len(results)), student_wait_s=wait_s, reference=reference,
            rewards=stats, new_version=manifest["version"] if manifest else None,
            sft=manifest["sft"] if manifest else None, wall_s=round(time.perf_counter() - t0, 1))
        append_jsonl(run / "metrics.jsonl", row.to_json())
        self.rows.append(row)
        self.logger(row)
        print(report.table_line(labels(self.cfg), row))
        return row

    def close(self) -> None:
        """Let edits in flight land (an error elsewhere), stop the workers, close the queue."""
        if self.ahead is not None:
            self.ahead.join()
        self.workers.stop()
        self.queue.close()


def run_train(cfg: TrainConfig, resolved) -> list[report.RoundRow]:
    """Run (or resume) `seal train`; returns the metrics rows."""
    t = Train(cfg, resolved)
    t.setup()
    try:
        for r in t.pending():
            t.step(r)
    finally:
        t.close()
    print(report.final_table(cfg, labels(cfg), t.rows, t.run))
    print(report.machine_line(cfg, t.run))
    print(f"run folder: {t.run}")
    return t.rows


# ----- the round's parts, in the order `Train.step` calls them -----------------------------------
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
    train = [w for w in wanted if w.purpose == Purpose.train]
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
