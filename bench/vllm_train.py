"""`seal train configs/vllm_cpu.yaml` with both vLLM backends against the same config with both set
to transformers, one after the other in this run. Prints JSON.

Run it with the environment that has vllm: ``.venv-vllm/bin/python bench/vllm_train.py`` (`make
vllm-env`). Each side is a fresh `seal train` process in its own run folder under ``--out`` (deleted
first), so model loading and engine start-up count: they are what a user waits for. Wall times are
the runs' own per-round records (``wall_s`` in metrics.jsonl) and the process's whole time. The
transformers side runs in the same dtype (fp32, set in the config) and on the same passages.

    .venv-vllm/bin/python bench/vllm_train.py [--out bench/out/vllm_train] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO

SIDES = {"vllm": [],
         "transformers": ["teacher.generation.backend=transformers", "students.0.answer.backend=transformers"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "vllm_train"))
    ap.add_argument("overrides", nargs="*", help="config overrides for both sides, e.g. rounds=2")
    args = ap.parse_args()
    import torch

    from core.models import machine
    from core.runs import read_jsonl

    seal = Path(sys.executable).parent / "seal"
    out = {"command": " ".join(["python bench/vllm_train.py", *args.overrides]), "config": "configs/vllm_cpu.yaml",
           "machine": machine(), "threads": torch.get_num_threads(), "sides": {}}
    for side, extra in SIDES.items():
        run = Path(args.out) / side
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run([str(seal), "train", "configs/vllm_cpu.yaml", f"run_dir={run}", *extra, *args.overrides],
                       cwd=REPO, check=True, stdout=sys.stderr)
        rows = [json.loads(x) for x in read_jsonl(run / "metrics.jsonl")]
        out["sides"][side] = {"process_s": round(time.perf_counter() - t0, 1),
                              "rounds_wall_s": [r["wall_s"] for r in rows],
                              "heldout": rows[-1]["heldout"], "rewards": rows[0].get("rewards")}
    v, t = out["sides"]["vllm"], out["sides"]["transformers"]
    out["process_s_vllm_over_transformers"] = round(v["process_s"] / t["process_s"], 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
