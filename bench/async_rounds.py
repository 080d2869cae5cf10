"""Synchronous vs asynchronous ReST^EM rounds: wall time of the same `seal train` run both ways.
Prints JSON.

configs/demo.yaml, shrunk by default to 3 rounds of 2 contexts x 2 edits and 2 held-out contexts,
run twice in fresh run folders: baseline `async_rounds=false`, candidate `async_rounds=true`
(round r+1's edits are written while round r is scored). Both use process workers; the teacher
generates in the driver. Same seeds, so the first round is identical; later rounds differ because
async edits come from the previous teacher version. On a 2-core CPU both sides compete for the same
cores, so the gain is whatever idle time the overlap fills, not a doubling.

    python bench/async_rounds.py [--out bench/out/async_rounds] [key=value ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time

from _common import REPO

SHRINK = ["rounds=3", "contexts_per_round=2", "edits_per_context=2", "heldout.limit=2", "data.limit=6"]


def run(mode: bool, run_dir: str, overrides: list[str]) -> dict:
    from core.config import load_config
    from orchestration.train import TrainConfig, run_train

    shutil.rmtree(run_dir, ignore_errors=True)
    cfg, resolved = load_config(TrainConfig, REPO / "configs" / "demo.yaml",
                                [*SHRINK, *overrides, f"async_rounds={str(mode).lower()}", f"run_dir={run_dir}"])
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        rows = run_train(cfg, resolved)
    wall = time.perf_counter() - t0
    stale = sum(r.jobs["stale"] for r in rows)
    return {"async_rounds": mode, "wall_s": round(wall, 1), "rounds": len(rows) - 1, "stale_jobs": stale,
            "round_wall_s": [r.wall_s for r in rows]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "async_rounds"))
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. rounds=2")
    args = p.parse_args()
    os.chdir(REPO)
    base = run(False, f"{args.out}/sync", args.overrides)
    cand = run(True, f"{args.out}/async", args.overrides)
    print(json.dumps({"baseline": base, "candidate": cand, "speedup": round(base["wall_s"] / cand["wall_s"], 3),
                      "saved_s": round(base["wall_s"] - cand["wall_s"], 1)}, indent=2))


if __name__ == "__main__":
    main()
