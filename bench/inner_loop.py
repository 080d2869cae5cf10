"""Inner-loop throughput: the reference recipe vs a naive one vs the project's default. Prints JSON.

Student smollm2-135m-instruct; the same SQuAD-subset passages and restatement edits
(bench/restate_edits.py) for every setting, all in one run, so the ratios are not hostage to
machine noise between runs.

- reference: the SEAL reference implementation's recipe: batch 1, every sequence padded to 2048
  tokens with loss on the pads, the baseline re-scored for every adaptation. Slow, so it runs on
  fewer passages and one epoch, and is compared per real (non-pad) trained token. It uses
  transformers' default attention (sdpa), as the reference did.
- naive: batch 1, dynamic padding (no pad tokens at batch 1), fp32.
- default: the project's default StudentConfig (length-grouped batches, bf16 autocast where supported).
naive and default first adapt once on a passage outside the timed ones (warmup_s), as a
long-running worker has done before its first timed job.

real_tokens_per_s = non-pad tokens trained / training seconds; adaptations_per_min counts whole
adaptations (train + score, plus the baseline re-score for reference). mfu = 4 x base parameters x
default real_tokens_per_s / peak_flops (frozen base: forward + activation gradients), with peak_flops
from a square matmul probe in the training dtype, measured in this run. mfu_ceilings holds the same
ratio for the default's own batches run through the frozen base alone (no adapter) and for the base's
matmuls alone: bounds on what any LoRA recipe at these batch shapes can reach here.

    python bench/inner_loop.py [--contexts 6] [--reference-contexts 2]
"""

from __future__ import annotations

import argparse
import json
import time

from _common import restatement, squad_subset

MODEL = "smollm2-135m-instruct"


def peak_flops(dtype, n: int = 2048, reps: int = 8, rounds: int = 3) -> float:
    """Best of ``rounds`` timings of ``reps`` square matmuls (the first ones on a cold core run slow,
    and a low peak would flatter the MFU)."""
    import torch

    a = torch.randn(n, n).to(dtype)
    a @ a  # warm-up
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ a
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


def reference_train(st, seqs: list[str], epochs: int) -> tuple[int, float]:
    """The reference loop: batch 1, pad to 2048, labels = input ids including the pads."""
    import torch

    model = st._fresh_adapter(st.cfg.lora, st.cfg.train.seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=st.cfg.train.learning_rate)
    model.train()
    real, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for s in seqs:
            enc = st.tok(s, padding="max_length", max_length=2048, truncation=True, return_tensors="pt")
            real += int(enc["attention_mask"].sum())
            loss = model(input_ids=enc["input_ids"], labels=enc["input_ids"]).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    model.eval()
    st._active = True
    return real, time.perf_counter() - t0


def ceilings(st, contexts) -> dict:
    """Upper bounds for the default recipe's MFU on this machine, at its own batches (same edits,
    batching and epochs): ``base_only`` runs forward + backward (to the input embeddings) through the
    frozen base with the adapter disabled, so no LoRA work at all; ``matmul_only`` runs just the base's
    linear layers' matmuls (forward and activation gradient) at those batches' shapes (pads included).
    Real tokens per second of each; the gaps say where the default's time goes."""
    import random

    import torch
    from orchestration.core.domains.sequences import edit_to_sequences
    from orchestration.core.domains.spec import TrainSpec

    batches = []
    for c in contexts:
        spec = TrainSpec(sequences=tuple(edit_to_sequences(c.title, c.context, restatement(c)).sequences))
        ids, labels, *_ = st._encode(spec, st.cfg.train.max_length)
        rng = random.Random(st.cfg.train.seed)
        for _ in range(st.cfg.train.epochs):
            batches += list(st._batches(ids, labels, st.cfg.train, rng))
    real = sum(int(m.sum()) for _, m, _ in batches)
    model = st._fresh_adapter(st.cfg.lora, st.cfg.train.seed)
    embed = model.get_input_embeddings()
    with model.disable_adapter():
        t0 = time.perf_counter()
        for inp, mask, lab in batches:
            with st._autocast():
                x = embed(inp).detach().requires_grad_()
                loss = model(inputs_embeds=x, attention_mask=mask, labels=lab, use_cache=False).loss
            loss.backward()
        base_s = time.perf_counter() - t0
    weights = [m.weight for name, m in st.model.named_modules()
               if isinstance(m, torch.nn.Linear) and "lora_" not in name]
    dtype = weights[0].dtype
    mm_s = 0.0
    with torch.no_grad():
        for _, mask, _ in batches:
            n = mask.numel()
            ins = {d: torch.randn(n, d, dtype=dtype) for w in weights for d in w.shape}
            t0 = time.perf_counter()
            for w in weights:
                ins[w.shape[1]] @ w.t()
                ins[w.shape[0]] @ w
            mm_s += time.perf_counter() - t0
    st.discard()
    return {"batches": len(batches), "real_tokens": real,
            "base_only_real_tokens_per_s": round(real / base_s, 1),
            "matmul_only_real_tokens_per_s": round(real / mm_s, 1)}


def run_setting(name: str, contexts, epochs: int | None = None, attn: str | None = None, warmup=None,
                **train) -> tuple:
    from student.config import StudentConfig
    from student.model import Student
    from student.scoring import Baselines, adapt_and_score, make_grader, score_context
    from orchestration.core.domains.sequences import edit_to_sequences

    cfg = StudentConfig(model=MODEL, attn_implementation=attn)
    for k, v in train.items():
        setattr(cfg.train, k, v)
    if epochs:
        cfg.train.epochs = epochs
    st = Student(cfg)
    grade = make_grader("f1")
    base = Baselines(st, grade)
    for c in contexts:
        base.get(c)  # baselines computed before the clock starts, as a cache would hold them
    warmup_s = None
    if warmup is not None:  # one adaptation before the clock: a long-running worker has paid this once
        t0 = time.perf_counter()
        adapt_and_score(st, base, [warmup], [restatement(warmup)], condition="edits", completion=0, key="warmup")
        warmup_s = round(time.perf_counter() - t0, 2)
    real = train_s = 0.0
    scores, t0 = [], time.perf_counter()
    for c in contexts:
        edit = restatement(c)
        if name == "reference":
            seqs = list(edit_to_sequences(c.title, c.context, edit).sequences)
            score_context(st, c, grade)  # the reference re-scores the baseline for every adaptation
            r_tokens, r_s = reference_train(st, seqs, cfg.train.epochs)
            score_context(st, c, grade)
            st.discard()
            real, train_s = real + r_tokens, train_s + r_s
        else:
            r = adapt_and_score(st, base, [c], [edit], condition="edits", completion=0, key=c.context_id)
            real, train_s = real + r.train["real_tokens"], train_s + r.train["train_s"]
            scores += [v.score for v in r.verdicts]
    wall = time.perf_counter() - t0
    out = {"contexts": len(contexts), "epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size,
           "dtype": cfg.train.dtype, "warmup_s": warmup_s, "adaptations_per_min": round(60 * len(contexts) / wall, 3),
           "real_tokens_per_s": round(real / train_s, 1), "real_tokens": int(real), "train_s": round(train_s, 2)}
    if scores:
        out["accuracy"] = round(sum(scores) / len(scores), 4)
        out["n_questions"] = len(scores)
    params = sum(p.numel() for n, p in st.model.named_parameters() if "lora_" not in n)
    return out, params, st


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, default=6)
    ap.add_argument("--reference-contexts", type=int, default=2)
    args = ap.parse_args()
    import torch

    from student.model import autocast_dtype

    contexts = squad_subset(0, args.contexts)
    # transformers' default attention (sdpa) for the reference, as it ran: eager attention would
    # hold 30 layers x 9 heads x 2048^2 fp32 scores for the backward pass (> 20 GB).
    ref, _, _ = run_setting("reference", contexts[: args.reference_contexts], epochs=1, attn="sdpa",
                            batch_size=1, dtype="fp32")
    warmup = squad_subset(args.contexts, 1)[0]  # a passage outside the timed ones
    naive, _, _ = run_setting("naive", contexts, warmup=warmup, batch_size=1, dtype="fp32")
    default, params, st = run_setting("default", contexts, warmup=warmup)
    ceiling = ceilings(st, contexts)
    dtype = autocast_dtype(st.cfg.train.dtype) or torch.float32
    peak = peak_flops(dtype)
    mfu = lambda tok_s: round(4 * params * tok_s / peak, 3)
    print(json.dumps({
        "model": MODEL, "base_parameters": params, "threads": torch.get_num_threads(),
        "settings": {"reference": ref, "naive": naive, "default": default},
        "speedup_vs_reference": round(default["real_tokens_per_s"] / ref["real_tokens_per_s"], 2),
        "speedup_vs_naive": round(default["real_tokens_per_s"] / naive["real_tokens_per_s"], 2),
        "accuracy_default_minus_naive": round(default["accuracy"] - naive["accuracy"], 4),
        "mfu": mfu(default["real_tokens_per_s"]),
        "mfu_ceilings": {"base_only": mfu(ceiling["base_only_real_tokens_per_s"]),
                         "matmul_only": mfu(ceiling["matmul_only_real_tokens_per_s"]), **ceiling},
        "peak_flops": round(peak), "peak_dtype": str(dtype).replace("torch.", ""),
    }, indent=1))


if __name__ == "__main__":
    main()
