"""Inner-loop throughput: the reference recipe, a naive one, today's PEFT loop and the project's
batched multi-adapter loop at K = 1, 4, 8, 16, all in one run. Prints JSON.

The same SQuAD-subset passages and restatement edits (bench/restate_edits.py) for every setting,
all in one run, so the ratios are not hostage to machine noise between runs. Each setting runs in
its own subprocess, so its ``peak_rss_mb`` is its own, and adapts once on a passage outside the
timed ones first (``warmup_s``), as a long-running worker has done before its first timed job.

- reference: the SEAL reference implementation's recipe: batch 1, every sequence padded to 2048
  tokens with loss on the pads, the baseline re-scored for every adaptation. Slow, so it runs on
  fewer passages and one epoch, and is compared per real (non-pad) trained token. transformers'
  default attention (sdpa), as the reference used. smollm2 only (the built-in or its random-init shape).
- naive: batch 1, dynamic padding (no pad tokens at batch 1), fp32; PEFT. smollm2 only.
- default: today's recipe as it ran before the batched loop, kept here so the baseline stays fixed
  while the project's own path changes: one PEFT adapter at a time, length-grouped batches of 4,
  bf16 autocast where `dtype: auto` picks it, the HF model's own loss.
- batched[K]: the project's path (`student.scoring.adapt_and_score_many`): K adaptations trained and
  answered in one pass, each with the default recipe. Groups of K over ``--contexts`` passages
  (2K for K = 16, so that every K runs at least 2 groups); accuracy is over the first
  ``--contexts`` passages, the same edits as default.

real_tokens_per_s = non-pad tokens trained / training seconds (batched: a group's training wall,
shared by its K); adaptations_per_min counts whole adaptations (train + answer). mfu = 4 x base
parameters x real_tokens_per_s / peak_flops (frozen base: forward + activation gradients), with
peak_flops from a square matmul probe in the training dtype on the students' device, in this run.
mfu_ceilings (each student): the default's own batches through the frozen base alone, and the base's matmuls alone;
``base_shape_scan``: the frozen base's forward + backward tokens/s at 1..32 rows of 64 tokens (what
a bigger batch can gain on this machine at all).
``time_breakdown`` (batched K = 8): the share of a fused step's CPU time in the LM head's matmuls
(forward and backward; gemma3's 262k-token vocabulary), from torch.profiler.

    python bench/inner_loop.py [--contexts 16] [--ks 1,4,8,16] [--students smollm2-135m-instruct,gemma3-270m]
                               [--device auto|cpu|cuda|cuda:N] [--random-init smollm2-135m,qwen2.5-0.5b]
    .venv-vllm/bin/python bench/inner_loop.py --vllm [--ks 1,8] [--out bench/out/inner_loop_vllm]

``--device``: where every setting runs (default auto: the GPU when torch sees one); on a GPU each
setting also reports ``cuda_peak_mb`` (``peak_rss_mb`` is host memory). ``--random-init``: students
built from `_shapes` (real shape, random weights: speed means something, accuracy does not), for a
machine without the built-ins' packages; gemma3-270m needs its tokenizer materialised.

``--vllm``: instead, batched[K] answering through transformers against the same setting answering
through vLLM (`student.answer.backend: vllm`, each adapter a runtime LoRA; the engine starts before the
clock), in the dtype the student trains in; ``answer_s`` is the groups' answering wall.

Each finished setting is kept under ``--out`` (bench/out/inner_loop) and reused by a rerun, so an
interrupted run resumes; delete the folder for a fresh run (each setting is timed in its own
process either way, but a resumed run's settings may come from different machine states).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import restatement, squad_subset
from _shapes import SHAPES

_SHAPE_NAMES = [s for s in SHAPES if s != "tiny"]

STUDENTS = ("smollm2-135m-instruct", "gemma3-270m")
HERE = Path(__file__).resolve().parent


def peak_flops(dtype, device: str = "cpu", reps: int = 8, rounds: int = 3) -> float:
    """Best of ``rounds`` timings of ``reps`` square matmuls on ``device`` (the first ones on a cold
    core run slow, and a low peak would flatter the MFU); 2048-wide on a CPU, 8192-wide on a GPU,
    whose peak a smaller one does not reach."""
    import torch

    n = 2048 if device == "cpu" else 8192
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a = torch.randn(n, n, device=device).to(dtype)
    a @ a  # warm-up
    sync()
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ a
        sync()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    return best


# ----- today's PEFT loop, frozen here as the baseline --------------------------------------------
def peft_adapter(st, seed: int):
    """The PEFT adapter of the loop before the batched one: the base wrapped once, re-initialised in
    place (A ~ Kaiming, B = 0 after torch.manual_seed(seed))."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    if getattr(st, "_bench_peft", None) is None:
        lora = st.cfg.lora
        st._bench_peft = get_peft_model(st.model, LoraConfig(r=lora.r, lora_alpha=lora.alpha,
                                                             lora_dropout=lora.dropout,
                                                             target_modules=list(lora.target_modules),
                                                             task_type="CAUSAL_LM"))
        if st.dtype is not None:
            for m in st._bench_peft.modules():
                if isinstance(m, LoraLayer):
                    m.cast_input_dtype_enabled = False
    torch.manual_seed(seed)
    for m in st._bench_peft.modules():
        if isinstance(m, LoraLayer):
            m.reset_lora_parameters("default", True)
    return st._bench_peft


def peft_train(st, spec, seed: int) -> tuple[int, float]:
    """(real tokens, seconds) of one adaptation with the PEFT loop: AdamW, length-grouped batches."""
    import random

    import torch

    from student.config import learning_rate_of

    train = st.cfg.train
    t0 = time.perf_counter()
    model = peft_adapter(st, seed)
    ids, labels, *_ = st._encode(spec, train.max_length)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate_of(st.cfg),
                            weight_decay=train.weight_decay)
    rng, real = random.Random(seed), 0
    model.train()
    for _ in range(train.epochs):
        for inp, mask, lab in st._batches(ids, labels, train, rng):
            peft_step(st, model, opt, inp, mask, lab)
            real += int(mask.sum())
    model.eval()
    return real, time.perf_counter() - t0


def peft_step(st, model, opt, inp, mask, lab):
    """One step of the PEFT loop (forward with HF's own loss, backward, AdamW); its loss, on the device."""
    with st._autocast():
        loss = model(input_ids=inp, attention_mask=mask, labels=lab, use_cache=False).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def reference_train(st, seqs: list[str], epochs: int) -> tuple[int, float]:
    """The reference loop: batch 1, pad to 2048, labels = input ids including the pads."""
    import torch

    from student.config import learning_rate_of

    model = peft_adapter(st, st.cfg.train.seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate_of(st.cfg))
    model.train()
    real, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for s in seqs:
            enc = st.tok(s, padding="max_length", max_length=2048, truncation=True, return_tensors="pt").to(st.device)
            real += int(enc["attention_mask"].sum())
            loss = model(input_ids=enc["input_ids"], labels=enc["input_ids"]).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    model.eval()
    return real, time.perf_counter() - t0


def ceilings(st, contexts) -> dict:
    """Upper bounds for the default recipe's MFU here, at its own batches (same edits, batching and
    epochs): ``base_only`` runs forward + backward (to the input embeddings) through the frozen base
    with no adapter; ``matmul_only`` runs just the base's linear layers' matmuls (forward and
    activation gradient) at those batches' shapes (pads included)."""
    import random

    import torch

    batches = []
    for c in contexts:
        ids, labels, *_ = st._encode(spec_of(c), st.cfg.train.max_length)
        rng = random.Random(st.cfg.train.seed)
        for _ in range(st.cfg.train.epochs):
            batches += list(st._batches(ids, labels, st.cfg.train, rng))
    real = sum(int(m.sum()) for _, m, _ in batches)
    model = peft_adapter(st, st.cfg.train.seed)
    embed = model.get_input_embeddings()
    with model.disable_adapter():
        t0 = time.perf_counter()
        for inp, mask, lab in batches:
            with st._autocast():
                x = embed(inp).detach().requires_grad_()
                loss = model(inputs_embeds=x, attention_mask=mask, labels=lab, use_cache=False).loss
            loss.backward()
        sync(st)
        base_s = time.perf_counter() - t0
    weights = [m.weight for name, m in st.model.named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in name]
    mm_s = 0.0
    with torch.no_grad():
        for _, mask, _ in batches:
            ins = {d: torch.randn(mask.numel(), d, dtype=weights[0].dtype, device=st.device) for w in weights
                   for d in w.shape}
            sync(st)
            t0 = time.perf_counter()
            for w in weights:
                ins[w.shape[1]] @ w.t()
                ins[w.shape[0]] @ w
            sync(st)
            mm_s += time.perf_counter() - t0
    return {"batches": len(batches), "real_tokens": real, "base_only_real_tokens_per_s": round(real / base_s, 1),
            "matmul_only_real_tokens_per_s": round(real / mm_s, 1), "base_shape_scan": shape_scan(st)}


def shape_scan(st, width: int = 64, rows=(1, 4, 8, 16, 32)) -> dict:
    """Tokens/s of the frozen base alone, forward + backward (to the input embeddings, the head's
    logits at every position), at ``rows`` x ``width`` random tokens: how much a bigger batch can
    gain on this machine at all, whatever the adapters do."""
    import torch

    model, embed = st.model, st.model.get_input_embeddings()
    decoder = getattr(model, model.base_model_prefix)
    out = {}
    model.train()
    for n in rows:
        ids = torch.randint(100, 1000, (n, width), generator=torch.Generator().manual_seed(0)).to(st.device)

        def once():
            with st._autocast():
                x = embed(ids).detach().requires_grad_()
                h = decoder(inputs_embeds=x, use_cache=False).last_hidden_state
                loss = model.get_output_embeddings()(h).float().logsumexp(-1).mean()
            loss.backward()

        once()  # warm-up
        reps = max(1, 1024 // (n * width))
        sync(st)
        t0 = time.perf_counter()
        for _ in range(reps):
            once()
        sync(st)
        out[f"{n}x{width}"] = round(reps * n * width / (time.perf_counter() - t0), 1)
    model.eval()
    return out


def sync(st) -> None:
    """Wait for the student's GPU, if it has one, so that a clock read after it counts its work."""
    import torch

    if st.device.type == "cuda":
        torch.cuda.synchronize(st.device)


RANDOM = "random-init-"
"""A student named ``random-init-<shape>`` is `_shapes.random_model(shape)`: real shape, random weights."""


def model_path(model: str) -> str:
    if model.startswith(RANDOM):
        from _shapes import random_model

        return random_model(model.removeprefix(RANDOM))
    return model


def spec_of(ctx):
    from core.domains.sequences import edit_to_sequences
    from core.domains.spec import TrainSpec

    return TrainSpec(sequences=tuple(edit_to_sequences(ctx.title, ctx.context, restatement(ctx)).sequences))


# ----- one setting, in its own process ---------------------------------------------------------
def run_one(model: str, setting: str, contexts: int, reference_contexts: int, k: int, device: str) -> dict:
    import resource

    import torch

    from core.jobs import StudentJob
    from student.config import StudentConfig
    from student.model import Student
    from student.scoring import Baselines, adapt_and_score_many, make_grader, score_context

    n = {"reference": reference_contexts, "naive": contexts, "default": contexts}.get(setting, contexts)
    if setting in ("batched", "vllm") and 2 * k > n:
        n = 2 * k  # at least two groups of K
    if setting == "breakdown":
        n = k  # one group, profiled
    ctxs = squad_subset(0, n)
    warm = squad_subset(max(n, contexts, 2 * 16), 1)[0]  # a passage outside every timed set
    cfg = StudentConfig(model=model_path(model), device=device,
                        attn_implementation="sdpa" if setting == "reference" else None)
    if setting == "vllm":  # the batched path, answering through vLLM in the dtype it trains in
        from core.models import machine

        cfg.answer.backend, v = "vllm", cfg.answer.vllm
        v.enforce_eager, v.max_model_len = True, 2048
        v.dtype = "bfloat16" if machine()["dtype_auto"] == "bf16" else "float32"
    if setting in ("reference", "naive"):
        cfg.train.batch_size, cfg.train.dtype = 1, "fp32"
    if setting == "reference":
        cfg.train.epochs = 1
    st = Student(cfg)
    grade = make_grader("f1")
    base = Baselines(st, grade)
    for c in [*ctxs, warm]:
        base.get(c)  # baselines before the clock, as a worker's cache holds them
    params = sum(p.numel() for p in st.model.parameters())
    real = train_s = answer_s = 0.0
    scores: list[float] = []
    warmup_s = None

    def peft_adapt_and_score(c):
        r_tokens, r_s = peft_train(st, spec_of(c), cfg.train.seed)
        return r_tokens, r_s, [v.score for v in score_context(st, c, grade)[0]]

    if setting in ("naive", "default"):
        t0 = time.perf_counter()
        peft_adapt_and_score(warm)
        warmup_s = round(time.perf_counter() - t0, 2)
    elif setting in ("batched", "vllm", "breakdown"):
        t0 = time.perf_counter()
        adapt_and_score_many(st, base, [(f"w{i}", StudentJob("knowledge", "edit", (warm,), (restatement(warm),))) for i in range(k)])
        warmup_s = round(time.perf_counter() - t0, 2)
    if setting == "breakdown":  # its own process: the profiler's memory can only sink itself
        return breakdown(st, base, ctxs[:k])
    t0 = time.perf_counter()
    if setting == "reference":
        from core.domains.sequences import edit_to_sequences

        for c in ctxs:
            score_context(st, c, grade)  # the reference re-scores the baseline for every adaptation
            seqs = list(edit_to_sequences(c.title, c.context, restatement(c)).sequences)
            r_tokens, r_s = reference_train(st, seqs, cfg.train.epochs)
            score_context(st, c, grade)
            real, train_s = real + r_tokens, train_s + r_s
    elif setting in ("naive", "default"):
        for c in ctxs:
            r_tokens, r_s, got = peft_adapt_and_score(c)
            real, train_s, scores = real + r_tokens, train_s + r_s, scores + got
    else:
        for g in range(0, n, k):
            group = ctxs[g:g + k]
            results = adapt_and_score_many(st, base, [(c.context_id, StudentJob("knowledge", "edit", (c,), (restatement(c),)))
                                                      for c in group])
            bad = [r for r in results if isinstance(r, Exception)]
            if bad:
                raise bad[0]
            real += sum(r.train["real_tokens"] for r in results)
            train_s += max(r.train["train_s"] for r in results)  # the group's training wall
            answer_s += max(r.timings["answer_s"] for r in results)  # and its answering wall
            scores += [v.score for c, r in zip(group, results) if ctxs.index(c) < contexts for v in r.verdicts]
    wall = time.perf_counter() - t0
    out = {"contexts": n, "epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size,
           "dtype": str(st.dtype or torch.float32).replace("torch.", ""), "dtype_setting": cfg.train.dtype,
           "warmup_s": warmup_s, "adaptations_per_min": round(60 * n / wall, 3),
           "real_tokens_per_s": round(real / train_s, 1), "real_tokens": int(real), "train_s": round(train_s, 2),
           "wall_s": round(wall, 2), "base_parameters": params, "threads": torch.get_num_threads()}
    if setting in ("batched", "vllm"):
        out["k"], out["answer_s"] = k, round(answer_s, 2)
    if scores:
        out["accuracy"] = round(sum(scores) / len(scores), 4)
        out["n_questions"] = len(scores)
    if setting == "default":
        out["ceilings"] = ceilings(st, ctxs)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if st.device.type == "cuda":
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(st.device) / 2**20)
    return out


def breakdown(st, base, group, steps: int = 3) -> dict:
    """Where a batched group's time goes, from torch.profiler over its first ``steps`` fused steps
    and its answering (a whole group's events can exhaust memory): the self CPU time of the LM
    head's matmuls (an input or output with the vocabulary's width), of all matmuls, and of the
    rest (norms, rotary, attention softmax, adds, copies), as shares of all ops."""
    from torch.profiler import ProfilerActivity, profile

    from core.jobs import StudentJob
    from student.scoring import adapt_and_score_many

    vocab = st.model.get_output_embeddings().weight.shape[0]
    mms = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")
    old, st.cfg.train.max_steps = st.cfg.train.max_steps, steps
    try:
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            adapt_and_score_many(st, base, [(c.context_id, StudentJob("knowledge", "edit", (c,), (restatement(c),))) for c in group])
    finally:
        st.cfg.train.max_steps = old
    head = sum(e.self_cpu_time_total for e in prof.key_averages(group_by_input_shape=True)
               if e.key in mms and any(vocab in (s or []) for s in e.input_shapes))
    avg = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in avg)
    matmul = sum(e.self_cpu_time_total for e in avg if e.key in mms)
    return {"vocab": vocab, "profiled_steps": steps, "lm_head_matmul_share": round(head / total, 3),
            "matmul_share": round(matmul / total, 3), "other_ops_share": round(1 - matmul / total, 3),
            "top_ops": {e.key: round(e.self_cpu_time_total / total, 3)
                        for e in sorted(avg, key=lambda e: -e.self_cpu_time_total)[:6]},
            "profiled_s": round(total / 1e6, 1)}


def peak(dtype_name: str, device: str) -> dict:
    import torch

    from core.models import resolve_device

    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype_name]
    return {"peak_flops": round(peak_flops(dtype, str(resolve_device(device)))), "dtype": dtype_name}


# ----- the run ---------------------------------------------------------------------------------
CACHE: Path | None = None  # --out: each finished setting's JSON, reused by a rerun


def child(*args: str) -> dict:
    """One setting in a fresh process; its last stdout line is its JSON (kept under --out, so an
    interrupted run resumes at the first unfinished setting)."""
    saved = CACHE / ("_".join(args) + ".json") if CACHE else None
    if saved and saved.exists():
        print(f"  {' '.join(args)}: reused {saved}", file=sys.stderr, flush=True)
        return json.loads(saved.read_text())
    out = subprocess.run([sys.executable, str(Path(__file__)), "--child", *args], cwd=HERE, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise RuntimeError(f"setting {args} failed:\n{out.stderr[-4000:]}")
    print(f"  {' '.join(args)}: done", file=sys.stderr, flush=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if saved:
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(result))
    return result


def vllm_report(model: str, args) -> dict:
    """`--vllm`: the batched path answering through transformers and through vLLM, the same K."""
    out = {}
    for k in args.ks:
        hf = child("one", model, "batched", str(args.contexts), "0", str(k), args.device)
        vl = child("one", model, "vllm", str(args.contexts), "0", str(k), args.device)
        out[str(k)] = {"transformers": hf, "vllm": vl,
                       "answer_s_vllm_over_transformers": round(vl["answer_s"] / hf["answer_s"], 2),
                       "adaptations_per_min_vllm_over_transformers":
                           round(vl["adaptations_per_min"] / hf["adaptations_per_min"], 2),
                       "accuracy_vllm_minus_transformers": round(vl["accuracy"] - hf["accuracy"], 4)}
    return out


def student_report(model: str, args, peaks: dict) -> dict:
    def one(setting: str, contexts: int, ref: int, k: int) -> dict:
        return child("one", model, setting, str(contexts), str(ref), str(k), args.device)

    settings = {}
    if model in (STUDENTS[0], RANDOM + "smollm2-135m"):
        settings["reference"] = one("reference", args.contexts, args.reference_contexts, 1)
        settings["naive"] = one("naive", args.naive_contexts, 0, 1)
    settings["default"] = one("default", args.contexts, 0, 1)
    batched = {str(k): one("batched", args.contexts, 0, k) for k in args.ks}
    if "8" in batched:
        try:
            batched["8"]["time_breakdown"] = one("breakdown", args.contexts, 0, 8)
        except RuntimeError as e:
            batched["8"]["time_breakdown"] = {"error": str(e)[-500:]}
    default = settings["default"]

    def mfu(s: dict) -> float:
        p = peaks[s["dtype"]]
        return round(4 * s["base_parameters"] * s["real_tokens_per_s"] / p, 3)

    for b in batched.values():
        b["speedup_vs_default"] = round(b["adaptations_per_min"] / default["adaptations_per_min"], 2)
        b["mfu"] = mfu(b)
    out = {"settings": settings, "batched": batched, "mfu": mfu(default), "dtype": default["dtype"]}
    if "reference" in settings:
        out["speedup_vs_reference"] = round(default["real_tokens_per_s"] / settings["reference"]["real_tokens_per_s"], 2)
        out["speedup_vs_naive"] = round(default["real_tokens_per_s"] / settings["naive"]["real_tokens_per_s"], 2)
        out["accuracy_default_minus_naive"] = round(default["accuracy"] - settings["naive"]["accuracy"], 4)
    if "ceilings" in default:
        c = default.pop("ceilings")
        out["mfu_ceilings"] = {"base_only": round(4 * default["base_parameters"] * c["base_only_real_tokens_per_s"]
                                                  / peaks[default["dtype"]], 3),
                               "matmul_only": round(4 * default["base_parameters"] * c["matmul_only_real_tokens_per_s"]
                                                    / peaks[default["dtype"]], 3), **c}
    for k, b in batched.items():
        b["accuracy_minus_default"] = round(b["accuracy"] - default["accuracy"], 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, default=16)
    ap.add_argument("--naive-contexts", type=int, default=6)
    ap.add_argument("--reference-contexts", type=int, default=2)
    ap.add_argument("--ks", default=None, help="default 1,4,8,16 (with --vllm: 1,8)")
    ap.add_argument("--students", default=",".join(STUDENTS))
    ap.add_argument("--random-init", default=None, metavar="NAME[,NAME]",
                    help=f"instead of --students: real-shape, random-weight models ({', '.join(_SHAPE_NAMES)}; "
                         "bench/_shapes.py), for a machine without the built-ins' packages")
    ap.add_argument("--device", default="auto", help="auto (the GPU when torch sees one), cpu, cuda or cuda:N")
    ap.add_argument("--out", default=None,
                    help="where finished settings are kept; a rerun reuses them (delete the folder for a fresh "
                         "run); default bench/out/inner_loop (with --vllm: bench/out/inner_loop_vllm)")
    ap.add_argument("--vllm", action="store_true",
                    help="instead: answering through vLLM against transformers on the batched path (run it with "
                         ".venv-vllm/bin/python; default --ks 1,8 and the first student)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        what, *rest = args.child
        if what == "peak":
            print(json.dumps(peak(*rest)))
        else:
            model, setting, contexts, ref, k, device = rest
            print(json.dumps(run_one(model, setting, int(contexts), int(ref), int(k), device)))
        return
    if args.random_init:
        if args.students != ",".join(STUDENTS):
            ap.error("give --students or --random-init, not both")
        args.students = ",".join(RANDOM + name for name in args.random_init.split(","))
    args.ks = [int(k) for k in (args.ks or ("1,8" if args.vllm else "1,4,8,16")).split(",")]
    global CACHE
    CACHE = Path(args.out or HERE / "out" / ("inner_loop_vllm" if args.vllm else "inner_loop"))
    import torch

    from core.config import ConfigError
    from core.models import machine, resolve_device

    try:
        resolve_device(args.device, "--device")  # a GPU that is not there: refused before any setting runs
    except ConfigError as e:
        ap.error(str(e))

    t0 = time.perf_counter()
    if args.vllm:
        students = args.students.split(",") if args.students != ",".join(STUDENTS) else [STUDENTS[0]]
        print(json.dumps({"machine": machine(), "threads": torch.get_num_threads(),
                          "students": {m: vllm_report(m, args) for m in students},
                          "wall_s": round(time.perf_counter() - t0, 1)}, indent=1))
        return
    peaks = {d: child("peak", d, args.device)["peak_flops"] for d in ("bfloat16", "float32")}
    students = {m: student_report(m, args, peaks) for m in args.students.split(",")}
    top = students.get(STUDENTS[0], next(iter(students.values())))
    print(json.dumps({
        "model": STUDENTS[0] if STUDENTS[0] in students else next(iter(students)), "machine": machine(),
        "threads": torch.get_num_threads(), "peak_flops": peaks,
        **{k: v for k, v in top.items()}, "students": students, "wall_s": round(time.perf_counter() - t0, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
