"""The `seal train` config (`TrainConfig`, configs/demo.yaml; `EvalConfig` and `WorkersConfig`, which
`seal evaluate` shares), its checks, and what it decides
without running anything: which contexts each round trains on and which students score a step."""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from typing import Optional

from core import domains
from core import rewards as R
from core.catalog import cache_dir, check_model
from core.config import Choice, ConfigError, DataConfig, at, check_choice, check_min, check_positive
from core.contexts import Context
from orchestration.ray_cluster import RayConfig
from student.config import StudentConfig, check_students, learning_rate_of
from teacher.config import TeacherConfig
from teacher.writer import check_constrain, check_prompts


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
class EvalConfig:
    """Held-out evaluation of each teacher version (seal train, seal evaluate)."""

    sampled: bool = False
    """False: one greedy edit per held-out context. True: ``k`` sampled edits, reporting their mean."""
    k: int = 1
    """Edits per held-out context when ``sampled`` (1 or more)."""

    def check(self, key: str = "eval") -> None:
        check_min(self, key, 1, "k")


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


def contexts_of(cfg: TrainConfig, train: list[Context], r: int) -> list[Context]:
    """Training contexts of round ``r`` (none for the final, evaluation-only step)."""
    if r >= cfg.rounds:
        return []
    start = 0 if cfg.reuse_contexts else r * cfg.contexts_per_round
    return train[start:start + cfg.contexts_per_round]


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
