"""`seal train`: the ReST^EM outer loop, teacher and students linked by the run's queue.

Step r = 0 .. rounds, with teacher version v (v0 = the configured model):
  1. generate: v writes one greedy edit per held-out context (its evaluation) and, for r < rounds,
     k sampled edits for each of this round's training contexts (disjoint across rounds);
  2. enqueue one adapt job per (edit, student) -- plus base and passage on the held-out set at r = 0;
  3. wait while the student workers drain the jobs (`launch.py`);
  4. for r < rounds: gains (adapted - baseline, aggregated over students) -> reward rule ->
     TRL SFT on the rewarded (prompt, edit) pairs -> version v+1 in checkpoints/ (none rewarded:
     the teacher is kept as is);
  5. one row in metrics.jsonl, and a line of the console table.
Every step is idempotent, so rerunning the command on the run folder resumes where it stopped:
edits already written are reused, queued jobs are not redone, a version already saved for the
round is not retrained, and a step with a metrics row is skipped.

async_rounds: while the students score step r, a driver thread already writes round r+1's training
edits with v (`Prefetch`), so the teacher does not idle; step r+1 then scores edits one version
old. ``max_teacher_lag`` bounds that age: the driver publishes its newest version and the bound on
the queue, and a worker drops a staler job with the reason recorded (`student.worker.stale_reason`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from orchestration.core import rewards as R
from orchestration.core.config import ConfigError, DataConfig
from orchestration.core import domains
from orchestration.core.contexts import Context
from orchestration.core.models import trim_cpu_memory
from orchestration.core.queue import Job, Queue
from orchestration.core.records import SelfEdit, StudentResult
from orchestration.core.runs import append_jsonl, open_run, read_jsonl
from orchestration.driver import launch, report
from orchestration.driver.ray_launch import RayConfig
from student.config import StudentConfig
from student.worker import LAG_FLAG, VERSION_FLAG, job_kind
from teacher.config import TeacherConfig


ROLES = ("split", "same")
SAME = "same-model"  # the label of the one student of roles=same, in metrics and tables


def _default_students() -> list[StudentConfig]:
    return [StudentConfig(model="gemma3-270m")]


@dataclass
class WorkersConfig:
    """Student workers on this machine."""

    mode: str = "process"
    """'process': `seal worker` subprocesses started by `seal train`; 'inline': one worker per student
    inside the driver process (smallest setups)."""
    per_student: int = 1
    """Worker processes per student (mode 'process')."""
    threads: int = 0
    """torch threads per worker process; 0 = CPU cores // number of worker processes."""
    lease_s: float = 120.0
    """Seconds a leased job stays with its worker without renewal (renewed every lease_s / 3 while it
    runs); after a worker dies, its job is delivered again once this runs out."""
    max_attempts: int = 3
    """Deliveries of a job before it is dead-lettered (left out of rewards, counted in the metrics)."""
    poll_s: float = 0.5
    """Seconds between queue polls of an idle worker or a waiting driver."""
    restarts: int = 3
    """Restarts per worker process after it dies; beyond that `seal train` stops (resumable)."""


@dataclass
class EvalConfig:
    """Held-out evaluation of each teacher version."""

    sampled: bool = False
    """False: one greedy edit per held-out context. True: ``k`` sampled edits, reporting their mean."""
    k: int = 1
    """Edits per held-out context when ``sampled``."""


@dataclass
class TrainConfig:
    """Config of `seal train` (configs/demo.yaml)."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    roles: str = "split"
    """'split': the students are fixed checkpoints the teacher never changes. 'same': SEAL as published,
    one model in both roles: the student of each step is the teacher's current version, adapted and
    scored with the settings of ``students[0]`` (its ``model`` is ignored; other students too)."""
    students: list[StudentConfig] = field(default_factory=_default_students)
    """Student models that score every edit (each has its own workers and baselines)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training contexts; round r uses contexts [r * contexts_per_round, (r + 1) * contexts_per_round),
    or the first ``contexts_per_round`` in every round with ``reuse_contexts``."""
    heldout: DataConfig = field(default_factory=lambda: DataConfig(offset=20, limit=4))
    """Held-out contexts, evaluated after every round; must not overlap the training contexts used."""
    rounds: int = 2
    """ReST^EM rounds (teacher updates)."""
    contexts_per_round: int = 4
    """Training contexts per round (disjoint across rounds unless ``reuse_contexts``; their ids are recorded
    in metrics.jsonl)."""
    reuse_contexts: bool = False
    """Every round trains on the same first ``contexts_per_round`` contexts, with new edits (SEAL's ARC
    setting: RL over the same 12 tasks). False: each round takes fresh contexts."""
    edits_per_context: int = 3
    """k: sampled edits per training context."""
    reward: R.RewardConfig = field(default_factory=R.RewardConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    launcher: str = "local"
    """'local': student workers on this machine (``workers.mode``); 'ray': Ray actors on a cluster
    (``ray``), leasing through the driver, which keeps the queue file."""
    ray: RayConfig = field(default_factory=RayConfig)
    async_rounds: bool = False
    """Generate round r+1's edits while the students still score round r (one step off-policy);
    needs workers outside the driver (workers.mode=process, or launcher=ray)."""
    max_teacher_lag: int = 1
    """Staleness bound: an edit may be scored while the teacher is at most this many versions newer
    than the version that wrote it; staler jobs are dropped with the reason recorded."""
    logger: str = "none"
    """Also send metrics to 'tensorboard' or 'wandb' (optional extras; 'none' by default)."""
    run_dir: Optional[str] = None
    """Run folder; default runs/train-<timestamp>. An existing folder with the same config resumes."""
    models_cache: Optional[str] = None
    """Folder of materialised built-in models (default: $SEAL_MODEL_CACHE or the user cache dir)."""


def check_backends(cfg, teacher: bool) -> None:
    """The students' answer backends and, with ``teacher``, the teacher's generation settings and
    template (shared by `seal train` and `seal evaluate`): refused before any work."""
    from teacher.generate import BACKENDS
    from teacher.prompts import template_text

    from orchestration.core.models import require_vllm

    for i, s in enumerate(cfg.students):
        if s.answer.backend not in ("transformers", "vllm"):
            raise ConfigError(f"students.{i}.answer.backend={s.answer.backend!r}: use 'transformers' or 'vllm'")
        if s.answer.backend == "vllm":
            require_vllm(f"students.{i}.answer.backend")
    if not teacher:
        return
    g = cfg.teacher.generation
    if g.backend not in BACKENDS:
        raise ConfigError(f"teacher.generation.backend={g.backend!r}: use one of {list(BACKENDS)}")
    if g.constrain and domains.get(cfg.data.domain).edit_choices() is None:
        raise ConfigError(f"teacher.generation.constrain=true, but data.domain={cfg.data.domain!r} has free-text "
                          f"edits with no finite format to constrain to; set teacher.generation.constrain=false")
    if g.constrain and g.backend != "transformers":
        raise ConfigError("teacher.generation.constrain=true is implemented for the transformers backend only; "
                          "set teacher.generation.backend=transformers or constrain=false")
    if g.backend == "vllm":
        require_vllm("teacher.generation.backend")
    try:
        template_text(cfg.teacher.prompt, cfg.teacher.templates)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check(cfg: TrainConfig, train: list[Context], heldout: list[Context]) -> None:
    names = [s.model for s in cfg.students]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"students={names}: give one or more distinct student models")
    if cfg.roles not in ROLES:
        raise ConfigError(f"roles={cfg.roles!r}: use one of {list(ROLES)}")
    for key in ("rounds", "contexts_per_round", "edits_per_context"):
        if getattr(cfg, key) < (0 if key == "rounds" else 1):
            raise ConfigError(f"{key}={getattr(cfg, key)} is out of range; use a positive number")
    if cfg.data.domain != cfg.heldout.domain:
        raise ConfigError(f"data.domain={cfg.data.domain!r} but heldout.domain={cfg.heldout.domain!r}; "
                          f"train and evaluate in one domain")
    if cfg.launcher not in launch.LAUNCHERS:
        raise ConfigError(f"launcher={cfg.launcher!r}: use one of {list(launch.LAUNCHERS)}")
    if cfg.launcher == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("launcher=ray needs the ray package: pip install -e '.[dist]' (or set launcher=local)")
    if cfg.max_teacher_lag < 0:
        raise ConfigError(f"max_teacher_lag={cfg.max_teacher_lag} is out of range; use 0 or more")
    if cfg.async_rounds and cfg.launcher == "local" and cfg.workers.mode == "inline":
        raise ConfigError("async_rounds=true needs workers outside the driver: set workers.mode=process "
                          "(or launcher=ray), or async_rounds=false")
    if cfg.workers.mode not in launch.MODES:
        raise ConfigError(f"workers.mode={cfg.workers.mode!r}: use one of {list(launch.MODES)}")
    if cfg.logger not in report.LOGGERS:
        raise ConfigError(f"logger={cfg.logger!r}: use one of {list(report.LOGGERS)}")
    if cfg.logger != "none" and importlib.util.find_spec(cfg.logger) is None:
        raise ConfigError(f"logger={cfg.logger} needs the {cfg.logger} package: pip install -e '.[{cfg.logger}]' "
                          f"(or set logger=none)")
    check_backends(cfg, teacher=True)
    try:
        R.check(cfg.reward)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    need = cfg.contexts_per_round * (1 if cfg.reuse_contexts else cfg.rounds)
    if len(train) < need:
        what = "" if cfg.reuse_contexts else f"{cfg.rounds} rounds x "
        raise ConfigError(f"{what}contexts_per_round={cfg.contexts_per_round} need {need} training contexts, data "
                          f"gives {len(train)}; raise data.limit or lower contexts_per_round"
                          f"{'' if cfg.reuse_contexts else ' (or set reuse_contexts=true)'}")
    if not heldout:
        raise ConfigError("the held-out set is empty; set heldout.source/offset/limit")
    overlap = {c.context_id for c in train[:need]} & {c.context_id for c in heldout}
    if overlap:
        raise ConfigError(f"{len(overlap)} held-out context(s) are also training contexts; "
                          f"make heldout.offset/limit and data.offset/limit disjoint")


# ----- teacher versions -------------------------------------------------------------------------
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


def students_at(cfg: TrainConfig, model: str) -> list[tuple[str, StudentConfig]]:
    """(label, student config) of the students that score a step whose teacher is ``model``.

    With roles=same the student is the teacher's current version: its model (and so its job kind,
    workers and baselines) changes with every version, while its label stays ``same-model``."""
    if cfg.roles == "same":
        return [(SAME, dataclasses.replace(cfg.students[0], model=model))]
    return [(s.model, s) for s in cfg.students]


def labels(cfg: TrainConfig) -> list[str]:
    return [SAME] if cfg.roles == "same" else [s.model for s in cfg.students]


def version_of_round(run: Path, r: int) -> dict | None:
    """Manifest of the version trained on round ``r``'s edits, if it was saved."""
    from teacher.versions import list_versions, read_manifest

    for v in list_versions(run / "checkpoints"):
        m = read_manifest(run / "checkpoints" / f"v{v}")
        if m["round"] == r:
            return m
    return None


# ----- step 1: edits ----------------------------------------------------------------------------
def wanted_edits(cfg: TrainConfig, r: int, version: int, ctxs: list[Context], heldout: list[Context]):
    """[(edit_id, context, purpose, sample)] the step needs; ids are stable, so resume reuses them."""
    k_eval = cfg.eval.k if cfg.eval.sampled else 1
    out = [(f"v{version}/heldout/{c.context_id}/{i}", c, "heldout", i) for c in heldout for i in range(k_eval)]
    out += [(f"r{r}/{c.context_id}/{i}", c, "train", i) for c in ctxs for i in range(cfg.edits_per_context)]
    return out


def generate_edits(cfg: TrainConfig, run: Path, r: int, version: int, model: str, wanted, edits: dict) -> None:
    """Write the missing edits of ``wanted`` to edits.jsonl, one generate call per purpose and chunk
    of contexts (a crash loses at most the chunk in progress)."""
    from teacher.prompts import render

    missing = [w for w in wanted if w[0] not in edits]
    if not missing:
        return
    domain = domains.get(cfg.data.domain)
    gen = cfg.teacher.generation
    choices = domain.edit_choices() if gen.constrain else None
    backend = launch.teacher_backend(cfg, model)
    try:
        for purpose in ("heldout", "train"):
            todo = [w for w in missing if w[2] == purpose]
            greedy = purpose == "heldout" and not cfg.eval.sampled
            ctx_ids = list(dict.fromkeys(w[1].context_id for w in todo))
            n = max(w[3] for w in todo) + 1 if todo else 0
            per_chunk = max(1, gen.batch_size // max(1, n))
            for start in range(0, len(ctx_ids), per_chunk):
                chunk = [w for w in todo if w[1].context_id in set(ctx_ids[start:start + per_chunk])]
                ctxs = list({w[1].context_id: w[1] for w in chunk}.values())
                prompts = [render(cfg.teacher.prompt, cfg.teacher.templates, *domain.prompt_fields(c), backend.tokenizer,
                                  backend.chat) for c in ctxs]
                seed = gen.seed + 1000 * r + start + (500 if purpose == "heldout" else 0)
                outs = backend.generate(prompts, n, greedy=greedy, seed=seed, choices=choices)
                sampling = {"greedy": greedy, "temperature": gen.temperature, "top_p": gen.top_p,
                            "max_new_tokens": gen.max_new_tokens, "seed": seed, "constrain": gen.constrain}
                by_ctx = {c.context_id: (p, o) for c, p, o in zip(ctxs, prompts, outs)}
                for edit_id, c, _, i in chunk:
                    prompt, samples = by_ctx[c.context_id]
                    e = SelfEdit(edit_id=edit_id, context_id=c.context_id, teacher_version=version, round=r,
                                 purpose=purpose, sample=i, template=cfg.teacher.prompt, chat=backend.chat,
                                 prompt=prompt, text=samples[i].text, n_tokens=samples[i].n_tokens,
                                 finished=samples[i].finished, sampling=sampling)
                    append_jsonl(run / "edits.jsonl", e.to_json())
                    edits[edit_id] = e
    finally:
        backend.close()
        trim_cpu_memory()


# ----- step 2: jobs -----------------------------------------------------------------------------
def step_jobs(cfg: TrainConfig, students, r: int, version: int, wanted, heldout: list[Context]) -> list[Job]:
    domain = domains.get(cfg.data.domain)
    base = {"domain": domain.NAME, "edit": "", "edit_id": None, "sample": 0}
    jobs = []
    for _, s in students:
        kind = job_kind(s.model)
        if r == 0:  # reference conditions on the held-out set, once per run
            for c in heldout:
                for cond in domain.REFERENCE:
                    jobs.append(Job(f"{cond}/{c.context_id}@{s.model}", kind, {
                        **base, "context": domain.to_json(c), "condition": cond}, teacher_version=version, round=r))
        for edit_id, c, purpose, i in wanted:
            jobs.append(Job(f"{edit_id}@{s.model}", kind, {
                **base, "context": domain.to_json(c), "condition": "heldout" if purpose == "heldout" else "edit",
                "edit": None, "edit_id": edit_id, "sample": i}, teacher_version=version, round=r))
    return jobs


def with_edit_text(jobs: list[Job], edits: dict[str, SelfEdit]) -> list[Job]:
    """Fill in each job's edit text and the version that wrote it (async rounds: an older one)."""
    out = []
    for j in jobs:
        e = edits[j.payload["edit_id"]] if j.payload["edit_id"] is not None else None
        out.append(j if e is None else Job(j.key, j.kind, {**j.payload, "edit": e.text}, e.teacher_version, j.round))
    return out


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


# ----- step 4: rewards and the ReST^EM update ----------------------------------------------------
def reward_round(cfg: TrainConfig, students, wanted, results: dict[str, StudentResult]) -> tuple[list[str], dict]:
    """(rewarded edit ids, reward statistics) of a round's training edits."""
    train = [w for w in wanted if w[2] == "train"]
    per: dict[str, dict[str, float]] = {}
    for edit_id, _, _, _ in train:
        for _, s in students:
            res = results.get(f"{edit_id}@{s.model}")
            if res is not None:
                per.setdefault(edit_id, {})[s.model] = res.score - res.baseline_score
    meta = {w[0]: (w[1].context_id, w[3]) for w in train}
    gains, incomplete = R.edit_gains(per, [s.model for _, s in students], meta, cfg.reward.aggregate)
    ids = R.rewarded(cfg.reward, gains)
    stats = {"rule": cfg.reward.rule, "edits": len(train), "scored": len(gains), "incomplete": len(incomplete),
             "rewarded": len(ids), "mean_gain": sum(g.gain for g in gains) / len(gains) if gains else None,
             "max_gain": max((g.gain for g in gains), default=None)}
    return ids, stats


def update_teacher(cfg: TrainConfig, run: Path, r: int, version: int, model: str, ids: list[str],
                   stats: dict, edits: dict[str, SelfEdit]) -> dict | None:
    """Train the next version on the rewarded edits; returns its manifest (None: nothing rewarded)."""
    from teacher.rest_em import SFTExample, sft_update
    from teacher.versions import list_versions, prune

    done = version_of_round(run, r)
    if done is not None or not ids:
        return done
    new = max(list_versions(run / "checkpoints"), default=0) + 1
    examples = [SFTExample(i, edits[i].prompt, edits[i].text, edits[i].chat, edits[i].finished) for i in ids]
    manifest = sft_update(model, examples, cfg.teacher, run / "checkpoints" / f"v{new}", cache=cfg.models_cache,
                          manifest={"version": new, "parent_version": version, "round": r, "rewards": stats})
    trim_cpu_memory()
    prune(run / "checkpoints", cfg.teacher.sft.keep_last, report.best_version(run))
    return manifest


# ----- the loop ---------------------------------------------------------------------------------
def contexts_of(cfg: TrainConfig, train: list[Context], r: int) -> list[Context]:
    """Training contexts of round ``r`` (none for the final, evaluation-only step)."""
    if r >= cfg.rounds:
        return []
    start = 0 if cfg.reuse_contexts else r * cfg.contexts_per_round
    return train[start:start + cfg.contexts_per_round]


def collect(q: Queue, keys: set[str], run: Path, exported: set[str]) -> dict[str, StudentResult]:
    """Results of ``keys`` from the queue; new ones are appended to results.jsonl."""
    out = {}
    for key, raw in q.results().items():
        if key in keys:
            out[key] = StudentResult.from_json(json.dumps(raw))
            if key not in exported:
                append_jsonl(run / "results.jsonl", out[key].to_json())
                exported.add(key)
    return out


def run_train(cfg: TrainConfig, resolved) -> list[dict]:
    """Run (or resume) `seal train`; returns the metrics rows."""
    d, h = cfg.data, cfg.heldout
    train = d.load()
    heldout = h.load()
    check(cfg, train, heldout)
    if cfg.teacher.threads:
        import torch

        torch.set_num_threads(cfg.teacher.threads)
    from orchestration.core.catalog import cache_dir, checksum

    root = cache_dir(cfg.models_cache)
    fixed = cfg.students if cfg.roles == "split" else []  # roles=same: the students are the teacher's versions
    models = {"teacher": checksum(cfg.teacher.model, root), **{f"student:{s.model}": checksum(s.model, root)
                                                                 for s in fixed}}
    seeds = {"generation": cfg.teacher.generation.seed, "sft": cfg.teacher.sft.seed,
             **{f"student:{s.model}": s.train.seed for s in cfg.students}}
    run = open_run("train", cfg.run_dir, resolved, extra={"models": models, "seeds": seeds})
    edits = {e.edit_id: e for e in map(SelfEdit.from_json, read_jsonl(run / "edits.jsonl"))}
    exported = {json.loads(x)["key"] for x in read_jsonl(run / "results.jsonl")}
    rows = [json.loads(x) for x in read_jsonl(run / "metrics.jsonl")]
    logger = report.open_logger(cfg.logger, run)
    workers = launch.make_workers(cfg, run)
    queue = Queue(run / launch.QUEUE_FILE, max_attempts=cfg.workers.max_attempts)
    if cfg.roles == "same" and (len(cfg.students) > 1 or cfg.students[0].model != cfg.teacher.model):
        print(f"roles=same: the student is the teacher's current version, adapted with the settings of "
              f"students[0]; the student models {[s.model for s in cfg.students]} are ignored")
    print(report.table_header(labels(cfg)))
    for row in rows:
        print(report.table_line(labels(cfg), row))
    queue.set_flag(LAG_FLAG, str(cfg.max_teacher_lag))
    ahead: Prefetch | None = None
    try:
        for r in range(len(rows), cfg.rounds + 1):
            t0 = time.perf_counter()
            version, model = teacher_at(cfg, run, r)
            queue.set_flag(VERSION_FLAG, str(version))
            students = students_at(cfg, model)
            ctxs = contexts_of(cfg, train, r)
            wanted = wanted_edits(cfg, r, version, ctxs, heldout)
            generate_edits(cfg, run, r, version, model, wanted, edits)
            jobs = with_edit_text(step_jobs(cfg, students, r, version, wanted, heldout), edits)
            queue.put(jobs)
            keys = {j.key for j in jobs}
            if cfg.async_rounds and r + 1 < cfg.rounds:
                nxt = wanted_edits(cfg, r + 1, version, contexts_of(cfg, train, r + 1), [])
                ahead = Prefetch(cfg, run, r + 1, version, model, nxt, edits)
                ahead.start()
            workers.wait(keys, desc=f"round {r} jobs", students=[s for _, s in students])
            results = collect(queue, keys, run, exported)
            row = {"round": r, "teacher_version": version, "contexts": [c.context_id for c in ctxs],
                   "students": {label: s.model for label, s in students},
                   "heldout": report.heldout_scores(students, wanted, results),
                   "jobs": report.job_counts(queue, keys, len(results))}
            if r == 0:
                row["reference"] = report.reference_scores(students, heldout, results,
                                                           domains.get(cfg.data.domain).REFERENCE)
            if r < cfg.rounds:
                ids, stats = reward_round(cfg, students, wanted, results)
                manifest = update_teacher(cfg, run, r, version, model, ids, stats, edits)
                if manifest is not None:
                    queue.set_flag(VERSION_FLAG, str(manifest["version"]))
                row["rewards"] = stats
                row["new_version"] = manifest["version"] if manifest else None
                row["sft"] = manifest["sft"] if manifest else None
                if manifest is None:
                    print(f"round {r}: no rewarded edit among {stats['scored']} scored; the teacher stays v{version}")
            if ahead is not None:
                ahead.finish()
                ahead = None
            row["wall_s"] = round(time.perf_counter() - t0, 1)
            append_jsonl(run / "metrics.jsonl", json.dumps(row, sort_keys=True))
            rows.append(row)
            logger(row)
            print(report.table_line(labels(cfg), row))
    finally:
        if ahead is not None:  # an error elsewhere: let the edits in flight land before leaving
            ahead.join()
        workers.stop()
        queue.close()
    print(report.final_table(cfg, labels(cfg), rows))
    print(f"run folder: {run}")
    return rows
