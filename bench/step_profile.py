"""Where a fused training step's time goes: op counts, host syncs, Python functions and kernels.

The step is bench/overhead.py's (`LoraTrainer.fused_step` over K adapters x 4 rows x 64 tokens, on a
random-weight model of ``--shape``). Two profiled runs of the same ``--steps`` steps, after 3 warm-up:
- torch.profiler (CPU): the aten ops a step dispatches (top-level ones, not those an op calls
  itself), its ``.item()`` reads (``int(tensor)`` is one), and the ops' own CPU time (on a CPU,
  the kernels; what is left of the step's wall is Python, hooks and dispatch);
- cProfile: the cumulative time of the functions in student/ and of torch's backward, and the
  calls of ``.tolist()`` and ``.item()`` (with the item reads above: the host syncs a GPU would wait
  on), per step: routing and plan-building, hooks, the optimizer, the loss.
Both profilers slow what they watch (cProfile most where Python is busiest); ``step_ms`` is the
unprofiled median, for scale.

    python bench/step_profile.py [--shape tiny] [--k 32] [--steps 5]

The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import time

from _shapes import SHAPES, random_model
from overhead import fused_runs, student, token_ids


def op_profile(step, steps: int) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - t0
    events = prof.events()
    top = [e for e in events if e.name.startswith("aten::") and (e.cpu_parent is None
                                                                   or not e.cpu_parent.name.startswith("aten::"))]
    op_s = sum(e.cpu_time_total for e in top) / 1e6
    by_op: dict[str, float] = {}
    for e in top:
        by_op[e.name] = by_op.get(e.name, 0.0) + e.cpu_time_total / 1e6
    reads = sum(e.name == "aten::item" or (e.name == "aten::_local_scalar_dense" and e.cpu_parent is None)
                for e in events)
    return {"ops_per_step": round(len(top) / steps), "item_reads_per_step": round(reads / steps, 1),
            "profiled_wall_ms": round(1000 * wall / steps, 1), "op_cpu_ms": round(1000 * op_s / steps, 1),
            "outside_ops_ms": round(1000 * (wall - op_s) / steps, 1),
            "top_ops_ms": {k: round(1000 * v / steps, 1) for k, v in sorted(by_op.items(), key=lambda x: -x[1])[:10]}}


def function_profile(step, steps: int, top: int = 20) -> dict:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step()
    prof.disable()
    stats = pstats.Stats(prof).stats
    out = {}
    for (path, line, name), (_, calls, _, cum, _) in stats.items():
        mine = "/student/" in path
        theirs = path == "~" and any(f"'{m}'" in name for m in ("run_backward", "tolist", "item"))
        if mine or theirs:
            where = f"{path.rsplit('/', 1)[-1]}:{line}:{name}" if mine else name
            out[where] = {"ms": round(1000 * cum / steps, 1), "calls": round(calls / steps, 1)}
    ranked = sorted(out.items(), key=lambda x: -x[1]["ms"])
    return dict(ranked[:top] + [(k, v) for k, v in ranked[top:] if k.startswith("<")])  # the syncs, always


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="tiny", choices=list(SHAPES))
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    import torch

    st = student(random_model(args.shape), args.device)
    runs = fused_runs(st, token_ids(args.k, min(SHAPES[args.shape]["vocab_size"], len(st.tok))))
    sync = torch.cuda.synchronize if st.device.type == "cuda" else (lambda: None)

    def step():
        st.trainer.fused_step(runs)
        sync()

    st.model.train()
    for _ in range(3):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    ops = op_profile(step, args.steps)
    functions = function_profile(step, args.steps)
    print(json.dumps({"shape": args.shape, "k": args.k, "device": args.device, "threads": torch.get_num_threads(),
                      "dtype": str(st.dtype or torch.float32).removeprefix("torch."),
                      "step_ms": round(1000 * statistics.median(times), 1), **ops, "functions": functions}))


if __name__ == "__main__":
    main()
