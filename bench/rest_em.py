"""ReST^EM on SQuAD: 2 rounds of `seal train configs/rest_em_squad.yaml`, held-out accuracy per round
as JSON. Prints JSON.

Teacher smollm2-135m-instruct, student gemma3-270m, training contexts from the standard SQuAD
subset and a disjoint held-out set (see the config). The run folder is kept, so an interrupted run
resumes where it stopped when the same command is given again; the JSON is rebuilt from its
metrics.jsonl. Wall time is the sum of the rounds' wall times (a resumed run adds up its parts).

    python bench/rest_em.py [--run-dir bench/out/rest_em] [key=value ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

from _common import REPO


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default=str(REPO / "bench" / "out" / "rest_em"))
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. rounds=1")
    args = p.parse_args()

    from orchestration.core.config import load_config
    from orchestration.driver.train import TrainConfig, run_train

    cfg, resolved = load_config(TrainConfig, REPO / "configs" / "rest_em_squad.yaml",
                                [f"run_dir={args.run_dir}", *args.overrides])
    os.chdir(REPO)  # the config's data paths are relative to the repository root
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the round tables go to stderr, the JSON to stdout
        rows = run_train(cfg, resolved)
    student = cfg.students[0].model
    ref = rows[0]["reference"][student]
    out = {
        "command": "python bench/rest_em.py " + " ".join(args.overrides),
        "student": student, "teacher": cfg.teacher.model, "grader": cfg.students[0].grader,
        "train_contexts": cfg.rounds * cfg.contexts_per_round, "edits_per_context": cfg.edits_per_context,
        "heldout_contexts": cfg.heldout.limit,
        "base": ref["base"], "passage": ref["passage"],
        "rounds": [{"round": r["round"], "teacher_version": r["teacher_version"],
                    "heldout": r["heldout"][student], "rewarded": (r.get("rewards") or {}).get("rewarded"),
                    "scored": (r.get("rewards") or {}).get("scored"),
                    "mean_gain": (r.get("rewards") or {}).get("mean_gain"), "wall_s": r["wall_s"]} for r in rows],
        "wall_s_rounds": round(sum(r["wall_s"] for r in rows), 1),
        "wall_s_this_call": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
