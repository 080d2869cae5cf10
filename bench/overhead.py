"""The price of batching: a fused step over K adapters against one PEFT adapter's step over the same rows.

fused_vs_peft = the median fused step (`LoraTrainer.fused_step`: K adapters x 4 rows x 64 tokens,
forward + backward + optimizer) / the median step of one PEFT adapter over the same 4K rows
(`inner_loop.peft_step`, the frozen PEFT baseline, imported unchanged). 1.0 means K adapters cost
what one adapter over all their rows costs: batching them is free. ``sequential_ms`` is what K
adapters trained one after another would cost: K x the median 4-row PEFT step.

Both sides run the same random-weight model (`_shapes`), dtype (the student's ``dtype: auto``) and
device, LoRA r 16 on every linear, dropout 0, with 3 warm-up and 10 timed steps. Every timed round
runs one step of each kind in turn (fused, PEFT over 4K rows, PEFT over 4 rows), so drift on a shared
machine falls on all three alike. A CUDA step is timed to its synchronize.

    python bench/overhead.py [--shape tiny,smollm2-135m] [--ks 1,8,32] [--device cpu|cuda]

The last stdout line is JSON: {"device", "results": [{"shape", "k", "fused_step_ms", "peft_step_ms",
"sequential_ms", "fused_vs_peft"}, ...], ...}. gemma3-270m runs at K <= 8 on a CPU (its 262k-token
vocabulary; a larger K is left out, and said so on stderr).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from _shapes import SHAPES, random_model
from inner_loop import peft_adapter, peft_step

ROWS, WIDTH = 4, 64


def student(folder: str, device: str):
    from student.config import StudentConfig
    from student.model import Student

    return Student(StudentConfig(model=folder, device=device))


def token_ids(k: int, vocab: int) -> list[list[list[int]]]:
    """K adaptations' batches of 4 random 64-token rows (every token real and labelled)."""
    import torch

    return torch.randint(100, vocab, (k, ROWS, WIDTH), generator=torch.Generator().manual_seed(k)).tolist()


def peft_batch(rows: list[list[int]], device) -> tuple:
    """(input_ids, attention_mask, labels) on the device, as the PEFT loop's batches come."""
    import torch

    inp = torch.tensor(rows, device=device)
    return inp, torch.ones_like(inp), inp.clone()


def fused_runs(st, ids: list[list[list[int]]]) -> list:
    """An adaptation per batch of ``ids``, in fresh adapter slots (seeded 0..K-1), whose next batch is
    that one, as `LoraTrainer.fused_step` takes them (their batches, like the loop's, on the host)."""
    from student.config import learning_rate_of
    from student.lora_train import Batch, _Run

    bank, lr = st.trainer.bank_for(len(ids)), learning_rate_of(st.cfg)
    runs = []
    for slot, rows in enumerate(ids):
        bank.reset(slot, slot)
        st.trainer.opt.reset(slot)
        b = Batch(tuple(map(tuple, rows)), tuple(map(tuple, rows)))
        runs.append(_Run(slot, slot, lr, ROWS, 0, 0, iter(()), next=(0, b)))
    return runs


def measure(shape: str, ks: list[int], device: str, steps: int, warmup: int) -> list[dict]:
    import torch

    from student.config import learning_rate_of

    folder = random_model(shape)
    fused_st, peft_st = student(folder, device), student(folder, device)
    sync = torch.cuda.synchronize if fused_st.device.type == "cuda" else (lambda: None)
    lr, vocab = learning_rate_of(fused_st.cfg), SHAPES[shape]["vocab_size"]
    model = peft_adapter(peft_st, 0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    out = []
    for k in ks:
        ids = token_ids(k, min(vocab, len(fused_st.tok)))
        runs = fused_runs(fused_st, ids)
        whole = peft_batch([row for rows in ids for row in rows], peft_st.device)  # the same 4K rows, one batch
        four = peft_batch(ids[0], peft_st.device)

        def timed(fn) -> float:
            t0 = time.perf_counter()
            fn()
            sync()
            return time.perf_counter() - t0

        times: dict[str, list[float]] = {"fused": [], "peft": [], "four": []}
        fused_st.model.train()
        model.train()
        for i in range(warmup + steps):
            got = {"fused": timed(lambda: fused_st.trainer.fused_step(runs)),
                   "peft": timed(lambda: peft_step(peft_st, model, opt, *whole)),
                   "four": timed(lambda: peft_step(peft_st, model, opt, *four))}
            if i >= warmup:
                for key, t in got.items():
                    times[key].append(t)
        fused_st.model.eval()
        model.eval()
        fused, peft, four = (1000 * statistics.median(times[key]) for key in ("fused", "peft", "four"))
        out.append({"shape": shape, "k": k, "fused_step_ms": round(fused, 2), "peft_step_ms": round(peft, 2),
                    "sequential_ms": round(k * four, 2), "fused_vs_peft": round(fused / peft, 3),
                    "dtype": str(fused_st.dtype or torch.float32).removeprefix("torch.")})
        print(f"  {shape} K={k}: {out[-1]}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="tiny", help=f"comma-separated, of {', '.join(s for s in SHAPES)}")
    ap.add_argument("--ks", default="1,8,32")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--steps", type=int, default=10, help="timed steps of each kind (at least 10)")
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    if args.steps < 10:
        ap.error(f"--steps {args.steps}: time at least 10 steps (a median of fewer is noise)")
    import torch

    from core.models import machine

    ks = [int(k) for k in args.ks.split(",")]
    results = []
    for shape in args.shape.split(","):
        todo = ks
        if shape == "gemma3-270m" and args.device == "cpu" and max(ks) > 8:
            todo = [k for k in ks if k <= 8]
            print(f"  gemma3-270m on a CPU: K <= 8 only (its 262k vocabulary); left out K = "
                  f"{[k for k in ks if k > 8]}", file=sys.stderr)
        results += measure(shape, todo, args.device, args.steps, args.warmup)
    print(json.dumps({"device": args.device, "results": results, "machine": machine(), "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "rows_per_adapter": ROWS, "tokens_per_row": WIDTH}))


if __name__ == "__main__":
    main()
