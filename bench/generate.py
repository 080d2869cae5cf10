"""Teacher generation throughput: the default batched bf16 settings vs an unbatched fp32 baseline. Prints JSON.

Both arms run in this one process on the same model, the default ``implications`` prompt over the
built-in demo passages, and the same sampling settings (TeacherConfig defaults: temperature 1.0,
top_p 0.95, seed 0), so their ratio is not hostage to machine noise between runs.

- baseline: batch 1, fp32 weights, no autocast: one stream at a time, as a plain loop would run.
- candidate: TeacherConfig()'s batch size and dtype ('auto' = bf16 where the CPU has fast bf16).

tokens counts generated tokens up to and including each sequence's EOS / end-of-turn (pads after
it are not counted); tokens_per_s = tokens / wall seconds of one generate() call over all of the
arm's sequences. Each arm first runs a short untimed warm-up at its own batch shape; then the arms
are timed in turn ``--repeats`` times (same seed, so the same tokens each time) and each arm's
fastest run counts: the machine is shared, and load from elsewhere only ever slows a run down.
The issue's target: speedup >= 8.

``--vllm`` (run it with .venv-vllm/bin/python, `make vllm-env`) compares instead the vLLM backend with
the transformers backend on the candidate's prompts and batch size, both greedy and in fp32, so both
write the same edits and so the same number of tokens (the JSON says how many edits are identical);
the vLLM engine runs without torch.compile (enforce_eager), and its start-up is not timed.

    python bench/generate.py [--model smollm2-135m-instruct] [--max-new-tokens 128]
                             [--candidate-batch 32] [--baseline-sequences 4] [--candidate-sequences N]
                             [--repeats 2] [--vllm]
"""

from __future__ import annotations

import argparse
import json
import time

import _common  # noqa: F401  (puts the repo on sys.path)

from core.models import machine

TARGET = 8.0
WARMUP_TOKENS = 8


class Arm:
    """One teacher backend with its generation settings, warmed up, timed by `run`."""

    def __init__(self, model: str, prompts_for, sequences: int, max_new_tokens: int, greedy: bool = False,
                 **generation):
        from teacher.config import TeacherConfig
        from teacher.transformers_backend import make_backend

        self.cfg = cfg = TeacherConfig(model=model)
        for k, v in generation.items():
            setattr(cfg.generation, k, v)
        self.greedy = greedy
        self.backend = make_backend(model, cfg)
        self.prompts = prompts_for(self.backend, sequences)
        cfg.generation.max_new_tokens = WARMUP_TOKENS
        self.backend.generate(self.prompts[:cfg.generation.batch_size], 1, greedy=greedy, seed=cfg.generation.seed)
        cfg.generation.max_new_tokens = max_new_tokens
        self.seconds: list[float] = []

    def run(self) -> None:
        t0 = time.perf_counter()
        out = self.backend.generate(self.prompts, 1, greedy=self.greedy, seed=self.cfg.generation.seed)
        self.seconds.append(time.perf_counter() - t0)
        self.gens = [g for per_prompt in out for g in per_prompt]  # the same every run: same seed

    def summary(self) -> dict:
        tokens = sum(g.n_tokens for g in self.gens)
        g = self.cfg.generation
        compute = g.dtype if g.backend == "vllm" else "bf16" if self.backend.dtype is not None else "fp32"
        return {"backend": g.backend, "batch_size": g.batch_size, "dtype": g.dtype, "compute_dtype": compute,
                "greedy": self.greedy,
                "sequences": len(self.gens), "finished": sum(g.finished for g in self.gens), "tokens": tokens,
                "seconds": round(min(self.seconds), 2), "tokens_per_s": round(tokens / min(self.seconds), 2),
                "tokens_per_s_each_run": [round(tokens / s, 2) for s in self.seconds]}


def main() -> None:
    from teacher.config import TeacherConfig

    default = TeacherConfig()
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=default.model)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--candidate-batch", type=int, default=default.generation.batch_size)
    ap.add_argument("--baseline-sequences", type=int, default=4)
    ap.add_argument("--candidate-sequences", type=int, default=None, help="default: one full candidate batch")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per arm, interleaved; the fastest counts")
    ap.add_argument("--vllm", action="store_true",
                    help="instead: the vLLM backend against the transformers backend, both greedy and fp32 on "
                         "the candidate's prompts (so both write the same tokens), vLLM without torch.compile")
    args = ap.parse_args()
    import torch

    from core.contexts import load_contexts
    from teacher.prompts import render

    contexts = load_contexts("demo")

    def prompts_for(backend, k: int) -> list[str]:
        """The first k passages' prompts, cycling through the demo set when k exceeds it."""
        return [render(default.prompt, default.templates, c.title, c.context, backend.tokenizer, backend.chat)
                for c in (contexts[i % len(contexts)] for i in range(k))]

    if args.vllm:
        return compare_vllm(args, default, prompts_for)
    baseline = Arm(args.model, prompts_for, args.baseline_sequences, args.max_new_tokens,
                   batch_size=1, dtype="fp32")
    candidate = Arm(args.model, prompts_for, args.candidate_sequences or args.candidate_batch,
                    args.max_new_tokens, batch_size=args.candidate_batch, dtype=default.generation.dtype)
    for _ in range(args.repeats):  # interleaved, so a burst of load from elsewhere hits both arms
        baseline.run()
        candidate.run()
    baseline, candidate = baseline.summary(), candidate.summary()
    speedup = candidate["tokens_per_s"] / baseline["tokens_per_s"]
    print(json.dumps({
        "model": args.model, "prompt": default.prompt, "max_new_tokens": args.max_new_tokens,
        "temperature": default.generation.temperature, "top_p": default.generation.top_p,
        "threads": torch.get_num_threads(), "machine": machine(), "baseline": baseline, "candidate": candidate,
        "speedup": round(speedup, 2), "target": TARGET, "meets_target": speedup >= TARGET,
    }, indent=1))


def compare_vllm(args, default, prompts_for) -> None:
    """`--vllm`: tokens/s of the two backends on the same greedy edits, timed in turn in this run."""
    import torch

    sequences = args.candidate_sequences or args.candidate_batch
    common = dict(greedy=True, batch_size=args.candidate_batch, dtype="fp32")
    arms = {"transformers": Arm(args.model, prompts_for, sequences, args.max_new_tokens, **common),
            "vllm": Arm(args.model, prompts_for, sequences, args.max_new_tokens, backend="vllm", enforce_eager=True,
                        max_model_len=2048, **common)}
    for _ in range(args.repeats):
        for arm in arms.values():
            arm.run()
    same = sum(a.text == b.text for a, b in zip(arms["vllm"].gens, arms["transformers"].gens))
    out = {name: arm.summary() for name, arm in arms.items()}
    arms["vllm"].backend.close()
    print(json.dumps({
        "model": args.model, "prompt": default.prompt, "max_new_tokens": args.max_new_tokens,
        "threads": torch.get_num_threads(), "machine": machine(), **out, "identical_edits": same,
        "vllm_over_transformers": round(out["vllm"]["tokens_per_s"] / out["transformers"]["tokens_per_s"], 2),
    }, indent=1))


if __name__ == "__main__":
    main()
