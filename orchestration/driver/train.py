"""`seal train`: the ReST^EM outer loop, teacher and students linked by the run's queue.

Step r = 0 .. rounds, with teacher version v (v0 = the configured model):
  1. generate: v writes one greedy edit per held-out context (its evaluation) and, for r < rounds,
     k sampled edits for each of this round's training contexts (disjoint across rounds);
  2. enqueue one adapt job per (edit, student) -- plus base and passage on the held-out set at r = 0,
     and the reference condition on each training context with ``reward.baseline: reference``;
  3. wait while the student workers drain the jobs (`launch.py`);
  4. for r < rounds: gains (adapted - baseline under ``reward.signal``; the baseline is the unadapted
     student or, with ``reward.baseline: reference``, the passage-only adaptation queued in step 2;
     aggregated over students; per edit in rewards.jsonl) -> reward rule ->
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
from orchestration.core.catalog import cache_dir, check_model
from orchestration.core.config import (Choice, ConfigError, DataConfig, at, check_choice, check_min,
                                       check_positive)
from orchestration.core import domains
from orchestration.core.contexts import Context
from orchestration.core.faults import fault
from orchestration.core.models import trim_cpu_memory
from orchestration.core.queue import Job, Queue
from orchestration.core.records import SelfEdit, StudentResult
from orchestration.core.runs import append_jsonl, open_run, read_jsonl
from orchestration.driver import launch, report
from orchestration.driver.ray_launch import RayConfig
from orchestration.driver.steps import Slot, grouped, write_edits
from student.config import StudentConfig, check_students, learning_rate_of
from student.worker import LAG_FLAG, VERSION_FLAG, job_kind
from teacher.config import TeacherConfig


class Roles(Choice):
    split = "split"
    same = "same"


class Launcher(Choice):
    local = "local"
    ray = "ray"


class WorkersMode(Choice):
    process = "process"
    inline = "inline"


class Logger(Choice):
    none = "none"
    tensorboard = "tensorboard"
    wandb = "wandb"


SAME = "same-model"  # the label of the one student of roles=same, in metrics and tables


def _default_students() -> list[StudentConfig]:
    return [StudentConfig(model="gemma3-270m")]


@dataclass
class WorkersConfig:
    """Student workers on this machine."""

    mode: WorkersMode = WorkersMode.process
    """'process': `seal worker` subprocesses started by `seal train`; 'inline': one worker per student
    inside the driver process (smallest setups)."""
    per_student: int = 1
    """Worker processes per student (mode 'process'); 1 or more."""
    threads: int = 0
    """torch threads per worker process; 0 = CPU cores // number of worker processes."""
    lease_s: float = 120.0
    """Seconds (> 0) a leased job stays with its worker without renewal (renewed every lease_s / 3 while
    it runs); after a worker dies, its job is delivered again once this runs out."""
    max_attempts: int = 3
    """Deliveries of a job (1 or more) before it is dead-lettered (left out of rewards, counted in the
    metrics)."""
    poll_s: float = 0.5
    """Seconds (> 0) between queue polls of an idle worker or a waiting driver."""
    restarts: int = 3
    """Restarts per worker process after it dies (0 or more); beyond that `seal train` stops (resumable)."""
    group_size: int = 8
    """K: adaptations a worker trains and answers in one pass (1 or more). The driver cuts each
    student's jobs, in key order, into fixed groups of K; a worker leases, runs and acks a group
    whole, so a result never depends on which jobs ran beside it by chance. Each adaptation keeps
    its own recipe, optimizer and stopping point; K only changes the speed (bench/inner_loop.py)."""

    def check(self, key: str = "workers") -> None:
        check_choice(self, key, "mode", WorkersMode)
        check_min(self, key, 1, "per_student", "max_attempts", "group_size")
        check_min(self, key, 0, "threads", "restarts")
        check_positive(self, key, "lease_s", "poll_s")


@dataclass
class EvalConfig:
    """Held-out evaluation of each teacher version."""

    sampled: bool = False
    """False: one greedy edit per held-out context. True: ``k`` sampled edits, reporting their mean."""
    k: int = 1
    """Edits per held-out context when ``sampled`` (1 or more)."""

    def check(self, key: str = "eval") -> None:
        check_min(self, key, 1, "k")


@dataclass
class TrainConfig:
    """Config of `seal train` (configs/demo.yaml)."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    roles: Roles = Roles.split
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
    """ReST^EM rounds (teacher updates); 0 evaluates v0 only."""
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
    launcher: Launcher = Launcher.local
    """'local': student workers on this machine (``workers.mode``); 'ray': Ray actors on a cluster
    (``ray``), leasing through the driver, which keeps the queue file."""
    ray: RayConfig = field(default_factory=RayConfig)
    async_rounds: bool = False
    """Generate round r+1's edits while the students still score round r (one step off-policy);
    needs workers outside the driver (workers.mode=process, or launcher=ray)."""
    max_teacher_lag: int = 1
    """Staleness bound: an edit may be scored while the teacher is at most this many versions newer
    than the version that wrote it; staler jobs are dropped with the reason recorded."""
    logger: Logger = Logger.none
    """Also send metrics to 'tensorboard' or 'wandb' (optional extras; 'none' by default)."""
    run_dir: Optional[str] = None
    """Run folder; default runs/train-<timestamp>. An existing folder with the same config resumes."""
    models_cache: Optional[str] = None
    """Folder of materialised built-in models (default: $SEAL_MODEL_CACHE or the user cache dir)."""

    def check(self, key: str = "") -> None:
        """Every value and every model, before any work (``key``: where this config sits, 'train' in
        `seal compare`). The data and the prompt lengths are checked by `prepare`."""
        check_students(self.students, at(key, "students"))
        self.teacher.check(at(key, "teacher"))
        self.data.check(at(key, "data"))
        self.heldout.check(at(key, "heldout"))
        self.reward.check(at(key, "reward"))
        self.eval.check(at(key, "eval"))
        self.workers.check(at(key, "workers"))
        for name, choices in (("roles", Roles), ("launcher", Launcher), ("logger", Logger)):
            check_choice(self, key, name, choices)
        check_min(self, key, 0, "rounds", "max_teacher_lag")
        check_min(self, key, 1, "contexts_per_round", "edits_per_context")
        if self.data.domain != self.heldout.domain:
            raise ConfigError(f"{at(key, 'data.domain')}={self.data.domain!r} but {at(key, 'heldout.domain')}="
                              f"{self.heldout.domain!r}; train and evaluate in one domain")
        check_constrain(self.teacher, self.data.domain, key)
        if self.reward.signal == R.Signal.loglik and domains.get(self.data.domain).DECODE.style != "question":
            raise ConfigError(f"{at(key, 'reward.signal')}=loglik needs a gold answer per question (data.domain="
                              f"knowledge); data.domain={self.data.domain!r} is graded otherwise: set "
                              f"{at(key, 'reward.signal')}=score")
        if self.launcher == Launcher.ray and importlib.util.find_spec("ray") is None:
            raise ConfigError(f"{at(key, 'launcher')}=ray needs the ray package: pip install -e '.[dist]' "
                              f"(or set launcher=local)")
        if self.launcher == Launcher.ray and self.workers.group_size > 1:
            raise ConfigError(f"{at(key, 'workers.group_size')}={self.workers.group_size}: the Ray launcher runs one "
                              f"adaptation per actor call; set workers.group_size=1 with launcher=ray")
        if self.async_rounds and self.launcher == Launcher.local and self.workers.mode == WorkersMode.inline:
            raise ConfigError(f"{at(key, 'async_rounds')}=true needs workers outside the driver: set workers.mode="
                              f"process (or launcher=ray), or async_rounds=false")
        if self.logger != Logger.none and importlib.util.find_spec(self.logger) is None:
            raise ConfigError(f"{at(key, 'logger')}={self.logger} needs the {self.logger} package: "
                              f"pip install -e '.[{self.logger}]' (or set logger=none)")
        root = cache_dir(self.models_cache)
        check_model(self.teacher.model, at(key, "teacher.model"), root)
        if self.roles == Roles.split:  # roles=same: the students are the teacher's versions
            for i, s in enumerate(self.students):
                check_model(s.model, at(key, f"students.{i}.model"), root)

    def check_contexts(self, train: list[Context], heldout: list[Context], key: str = "") -> None:
        """Enough training contexts for the rounds, and none of them held out."""
        need = self.contexts_per_round * (1 if self.reuse_contexts else self.rounds)
        if len(train) < need:
            what = "" if self.reuse_contexts else f"{self.rounds} rounds x "
            raise ConfigError(f"{what}{at(key, 'contexts_per_round')}={self.contexts_per_round} need {need} training "
                              f"contexts, {at(key, 'data')} gives {len(train)}; raise {at(key, 'data.limit')} or lower "
                              f"contexts_per_round{'' if self.reuse_contexts else ' (or set reuse_contexts=true)'}")
        overlap = {c.context_id for c in train[:need]} & {c.context_id for c in heldout}
        if overlap:
            raise ConfigError(f"{len(overlap)} held-out context(s) are also training contexts; make "
                              f"{at(key, 'heldout')}.offset/limit and {at(key, 'data')}.offset/limit disjoint")


def check_constrain(teacher: TeacherConfig, domain: str, key: str = "") -> None:
    """Constrained decoding needs a domain whose edits form a finite set."""
    if teacher.generation.constrain and domains.get(domain).edit_choices() is None:
        raise ConfigError(f"{at(key, 'teacher.generation.constrain')}=true, but data.domain={domain!r} has "
                          f"free-text edits with no finite format to constrain to; set "
                          f"teacher.generation.constrain=false")


def check_prompts(teacher: TeacherConfig, domain: str, cache: str | None, key: str, selections: dict) -> None:
    """The teacher's prompt for every context of ``selections`` (data key -> contexts) is within
    ``teacher.max_prompt_tokens``; only the tokenizer is loaded. Shared by every command with a teacher."""
    from teacher.prompts import check_prompt_lengths, prompt_tokenizer

    tokenizer, chat = prompt_tokenizer(teacher, cache, key)
    for data_key, contexts in selections.items():
        check_prompt_lengths(teacher, contexts, domains.get(domain), tokenizer, chat, key, data_key)


def prepare(cfg: TrainConfig, key: str = "") -> tuple[list[Context], list[Context]]:
    """(train, heldout) contexts of a config that passed ``cfg.check(key)``, refusing what only the data
    shows: too few contexts, overlap, prompts over ``teacher.max_prompt_tokens``. Runs before any work
    and before the run folder exists."""
    train = domains.load_data(cfg.data, at(key, "data"))
    heldout = domains.load_data(cfg.heldout, at(key, "heldout"))
    cfg.check_contexts(train, heldout, key)
    used = list({c.context_id: c for r in range(cfg.rounds) for c in contexts_of(cfg, train, r)}.values())
    check_prompts(cfg.teacher, cfg.data.domain, cfg.models_cache, at(key, "teacher"),
                  {at(key, "data"): used, at(key, "heldout"): heldout})
    return train, heldout


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
    workers and baselines) changes with every version, while its label stays ``same-model``. Its
    learning rate stays the one of v0's model (a built-in's own default holds for its versions too)."""
    if cfg.roles == "same":
        s0 = cfg.students[0]
        lr = learning_rate_of(dataclasses.replace(s0, model=cfg.teacher.model))
        return [(SAME, dataclasses.replace(s0, model=model, train=dataclasses.replace(s0.train, learning_rate=lr)))]
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
def wanted_edits(cfg: TrainConfig, r: int, version: int, ctxs: list[Context], heldout: list[Context]) -> list[Slot]:
    """The edit slots the step needs; ids are stable, so resume reuses them."""
    k_eval = cfg.eval.k if cfg.eval.sampled else 1
    out = [Slot(f"v{version}/heldout/{c.context_id}/{i}", c, "heldout", i) for c in heldout for i in range(k_eval)]
    out += [Slot(f"r{r}/{c.context_id}/{i}", c, "train", i) for c in ctxs for i in range(cfg.edits_per_context)]
    return out


def generate_edits(cfg: TrainConfig, run: Path, r: int, version: int, model: str, wanted: list[Slot],
                   edits: dict) -> None:
    """Write the missing edits of ``wanted`` to edits.jsonl (`steps.write_edits`: fixed chunks,
    seeded by their ids; each chunk appended in one write, so a crash loses at most the chunk in
    progress, and its resume regenerates the same chunk)."""
    if all(w.edit_id in edits for w in wanted):
        return
    domain = domains.get(cfg.data.domain)
    backend = launch.teacher_backend(cfg, model)

    def save(rows, sampling):
        new = [SelfEdit(edit_id=w.edit_id, context_id=w.context.context_id, teacher_version=version, round=r,
                        purpose=w.purpose, sample=w.sample, template=cfg.teacher.prompt, chat=backend.chat,
                        prompt=prompt, text=g.text, n_tokens=g.n_tokens, finished=g.finished, sampling=sampling)
               for w, prompt, g in rows if w.edit_id not in edits]
        append_jsonl(run / "edits.jsonl", "\n".join(e.to_json() for e in new))
        edits.update((e.edit_id, e) for e in new)

    try:
        write_edits(backend, cfg.teacher, domain, wanted, edits, save,
                    greedy=lambda purpose: purpose == "heldout" and not cfg.eval.sampled,
                    choices=domain.edit_choices() if cfg.teacher.generation.constrain else None)
    finally:
        backend.close()
        trim_cpu_memory()


# ----- step 2: jobs -----------------------------------------------------------------------------
def step_jobs(cfg: TrainConfig, students, r: int, version: int, wanted, heldout: list[Context]) -> list[Job]:
    domain = domains.get(cfg.data.domain)
    jobs = []
    for _, s in students:
        kind = job_kind(s.model)
        # the adaptation seed travels with the job: a worker never reads it from shared state
        base = {"domain": domain.NAME, "edit": "", "edit_id": None, "sample": 0, "seed": s.train.seed}
        refs = [(c, cond) for c in heldout for cond in domain.REFERENCE] if r == 0 else []  # once per run
        if cfg.reward.baseline == "reference":  # each training context's fixed recipe, for its gains
            refs += [(c, domain.REFERENCE[1]) for c in {w.context.context_id: w.context for w in wanted
                                                        if w.purpose == "train"}.values()]
        for c, cond in refs:
            jobs.append(Job(reference_key(cond, c.context_id, s.model), kind, {
                **base, "context": domain.to_json(c), "condition": cond}, teacher_version=version, round=r))
        for w in wanted:
            jobs.append(Job(f"{w.edit_id}@{s.model}", kind, {
                **base, "context": domain.to_json(w.context), "edit": None, "edit_id": w.edit_id, "sample": w.sample,
                "condition": "heldout" if w.purpose == "heldout" else "edit"}, teacher_version=version, round=r))
    return jobs


def reference_key(condition: str, context_id: str, student: str) -> str:
    """The job key of a reference condition (base, passage, default_ttt) of one student on one context."""
    return f"{condition}/{context_id}@{student}"


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
def reward_round(cfg: TrainConfig, run: Path, r: int, students, wanted,
                 results: dict[str, StudentResult]) -> tuple[list[str], dict]:
    """(rewarded edit ids, reward statistics) of a round's training edits. Each scored edit's gains
    over both baselines (the reference's where it ran) go to rewards.jsonl, one row per edit and
    round, written once: a resumed round reads the same stored results and gets the same rows."""
    from orchestration.core.stats import mean

    train = [w for w in wanted if w.purpose == "train"]
    rw, ref_cond = cfg.reward, domains.get(cfg.data.domain).REFERENCE[1]
    per: dict[str, dict[str, float]] = {}
    both: dict[str, dict[str, dict]] = {}
    for w in train:
        for _, s in students:
            res = results.get(f"{w.edit_id}@{s.model}")
            if res is None:
                continue
            g = R.gains(res, results.get(reference_key(ref_cond, w.context.context_id, s.model)), rw.signal)
            both.setdefault(w.edit_id, {})[s.model] = g
            if g[rw.baseline] is not None:  # a missing reference or log-likelihood: no gain, never a zero
                per.setdefault(w.edit_id, {})[s.model] = g[rw.baseline]
    meta = {w.edit_id: (w.context.context_id, w.sample) for w in train}
    gains, incomplete = R.edit_gains(per, [s.model for _, s in students], meta, rw.aggregate)
    ids = R.rewarded(rw, gains)
    done = {json.loads(x)["edit_id"] for x in read_jsonl(run / "rewards.jsonl") if json.loads(x)["round"] == r}
    kept, gain_of = set(ids), {g.edit_id: g.gain for g in gains}
    new = [json.dumps({"round": r, "edit_id": w.edit_id, "context_id": w.context.context_id, "sample": w.sample,
                       "signal": rw.signal, "baseline": rw.baseline, "gains": both[w.edit_id],
                       "gain": gain_of.get(w.edit_id), "rewarded": w.edit_id in kept}, sort_keys=True)
           for w in train if w.edit_id in both and w.edit_id not in done]
    if new:
        append_jsonl(run / "rewards.jsonl", "\n".join(new))

    stats = {"rule": rw.rule, "signal": rw.signal, "baseline": rw.baseline, "edits": len(train),
             "scored": len(gains), "incomplete": len(incomplete), "rewarded": len(ids),
             "mean_gain": mean(g.gain for g in gains), "max_gain": max((g.gain for g in gains), default=None),
             **{f"mean_gain_{b}": mean(g[b] for e in both.values() for g in e.values()) for b in ("base", "reference")}}
    return ids, stats


def update_teacher(cfg: TrainConfig, run: Path, r: int, version: int, model: str, ids: list[str],
                   stats: dict, edits: dict[str, SelfEdit]) -> dict | None:
    """Train the next version on the rewarded edits; returns its manifest (None: nothing rewarded)."""
    from teacher.rest_em import SFTExample, sft_update
    from teacher.versions import list_versions, prune

    done = version_of_round(run, r)
    if done is not None or not ids:
        return done
    examples = [SFTExample(i, edits[i].prompt, edits[i].text, edits[i].chat, edits[i].finished) for i in ids]
    kept = [x for x in examples if x.finished or not cfg.teacher.sft.drop_unfinished]
    if not kept:
        return None
    new = max(list_versions(run / "checkpoints"), default=0) + 1
    manifest = sft_update(model, kept, cfg.teacher, run / "checkpoints" / f"v{new}", cache=cfg.models_cache,
                          manifest={"version": new, "parent_version": version, "round": r, "rewards": stats,
                                    "dropped_unfinished": len(examples) - len(kept)})
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
                fault("result")
    return out


def run_train(cfg: TrainConfig, resolved) -> list[dict]:
    """Run (or resume) `seal train`; returns the metrics rows."""
    cfg.check()
    train, heldout = prepare(cfg)
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
    # The ledger holds every result: a line of results.jsonl torn (and cut) or lost in a crash comes
    # back, even in a finished run whose round loop would never collect it again.
    collect(queue, set(queue.results()), run, exported)
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
            queue.put(grouped(jobs, cfg.workers.group_size))
            keys = {j.key for j in jobs}
            if cfg.async_rounds and r + 1 < cfg.rounds:
                nxt = wanted_edits(cfg, r + 1, version, contexts_of(cfg, train, r + 1), [])
                ahead = Prefetch(cfg, run, r + 1, version, model, nxt, edits)
                ahead.start()
            t_wait = time.perf_counter()
            workers.wait(keys, desc=f"round {r} jobs", students=[s for _, s in students])
            wait_s = round(time.perf_counter() - t_wait, 1)  # the students' side of the round, in seconds
            results = collect(queue, keys, run, exported)
            row = {"round": r, "teacher_version": version, "contexts": [c.context_id for c in ctxs],
                   "students": {label: s.model for label, s in students},
                   "heldout": report.heldout_scores(students, wanted, results),
                   "jobs": report.job_counts(queue, keys, len(results)), "student_wait_s": wait_s}
            if r == 0:
                row["reference"] = report.reference_scores(students, heldout, results,
                                                           domains.get(cfg.data.domain).REFERENCE)
            if r < cfg.rounds:
                ids, stats = reward_round(cfg, run, r, students, wanted, results)
                manifest = update_teacher(cfg, run, r, version, model, ids, stats, edits)
                if manifest is not None:
                    queue.set_flag(VERSION_FLAG, str(manifest["version"]))
                    fault("saved")
                row["rewards"] = stats
                row["new_version"] = manifest["version"] if manifest else None
                row["sft"] = manifest["sft"] if manifest else None
                if manifest is None and ids:
                    print(f"round {r}: all {len(ids)} rewarded edits were cut at max_new_tokens "
                          f"(teacher.sft.drop_unfinished); the teacher stays v{version}")
                elif manifest is None:
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
    print(report.final_table(cfg, labels(cfg), rows, run))
    print(report.machine_line(cfg, run))
    print(f"run folder: {run}")
    return rows
