"""The batched inner loop against fixed references, on tiny in-process models (fp32):

(a) K = 1 against a copy of the PEFT loop the student ran before the batched bank (the anchor);
(b) K adaptations trained and answered together against the same K one at a time;
and the pieces: the chunked loss against HF's, SlotAdamW against torch's AdamW, the PEFT export,
merge vs no merge in continual mode, and that training changes the model.
"""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from core.contexts import load_contexts
from core.domains.knowledge import DECODE as QUESTION
from core.domains.spec import Query, TrainSpec
from student.model import Student
from tests.student.test_model import tiny_cfg

TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(scope="module")
def ctx():
    return load_contexts("demo", limit=1)[0]


def sentences(ctx, n: int, offset: int = 0) -> tuple[str, ...]:
    parts = [s.strip() + "." for s in ctx.context.split(".") if s.strip()]
    return tuple(parts[(offset + i) % len(parts)] for i in range(n))


def record_losses(st) -> dict[int, list[float]]:
    """Per-slot step losses of every fused step the student takes from now on."""
    log, step = defaultdict(list), st.trainer.fused_step

    def wrapped(live):
        out = step(live)
        for r, loss in zip(live, out):
            log[r.slot].append(loss)
        return out

    st.trainer.fused_step = wrapped
    return log


def slot_weights(st, slot: int) -> list:
    return [t[slot].detach().clone() for pair in zip(st.trainer.bank.A, st.trainer.bank.B) for t in pair]


# ----- (a) the anchor: today's PEFT loop, kept here as the fixed reference -----------------------
def peft_reference(path: str, st, spec: TrainSpec, seed: int):
    """The PEFT training loop of student/model.py before the batched bank, verbatim in substance:
    get_peft_model, reset_lora_parameters after torch.manual_seed(seed), torch AdamW, length-grouped
    batches shuffled by random.Random(seed), HF's ``model(labels=...).loss``. Returns (per-step
    losses, the PEFT model, its tokenizer)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    from core.models import load_model

    lora, train = st.cfg.lora, st.cfg.train
    model, tok = load_model(path, attn_implementation="eager")
    peft = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
    torch.manual_seed(seed)
    for module in peft.modules():
        if isinstance(module, LoraLayer):
            module.reset_lora_parameters("default", True)
    ids, labels, _, _ = st._encode(spec, train.max_length)
    lr = spec.learning_rate if spec.learning_rate is not None else train.learning_rate
    epochs = spec.epochs if spec.epochs is not None else train.epochs
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=lr, weight_decay=train.weight_decay)
    rng, losses = random.Random(seed), []
    peft.train()
    for _ in range(epochs):
        order = sorted(range(len(ids)), key=lambda j: (len(ids[j]), j))
        groups = [order[i:i + train.batch_size] for i in range(0, len(order), train.batch_size)]
        rng.shuffle(groups)
        for group in groups:
            width = max(len(ids[j]) for j in group)
            inp = torch.full((len(group), width), tok.pad_token_id)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            lab = torch.full((len(group), width), -100)
            for r, j in enumerate(group):
                inp[r, :len(ids[j])], mask[r, :len(ids[j])] = torch.tensor(ids[j]), 1
                lab[r, :len(ids[j])] = torch.tensor(labels[j])
            loss = peft(input_ids=inp, attention_mask=mask, labels=lab, use_cache=False).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if train.max_steps and len(losses) >= train.max_steps:
                break
        if train.max_steps and len(losses) >= train.max_steps:
            break
    peft.eval()
    return losses, peft, tok


def peft_answers(peft, st, questions: list[str]) -> list[str]:
    import torch

    enc = st.tok([st.prompt(q) for q in questions], return_tensors="pt", padding=True)
    with torch.inference_mode():
        gen = peft.generate(**enc, max_new_tokens=st.cfg.answer.max_new_tokens, do_sample=False,
                            pad_token_id=st.tok.pad_token_id, eos_token_id=st.stop_ids())
    return [st.tok.decode(g, skip_special_tokens=True).split("\n", 1)[0].strip()
            for g in gen[:, enc["input_ids"].shape[1]:]]


def test_one_adapter_matches_the_peft_loop(tiny_model, ctx):
    import torch

    st = Student(tiny_cfg(tiny_model, epochs=3, learning_rate=1e-2, weight_decay=0.01))
    spec = TrainSpec(sequences=(f"{ctx.title}\n{ctx.context}", *sentences(ctx, 4)))
    questions = [q.question for q in ctx.questions]
    before = st.answer(questions)
    ref_losses, peft, _ = peft_reference(tiny_model, st, spec, seed=7)
    log = record_losses(st)
    stats = st.train(spec, seed=7)
    assert stats.steps == len(ref_losses) == 9  # 3 epochs x ceil(5 / 2)
    torch.testing.assert_close(log[0], ref_losses, **TOL)
    ref = {n.removeprefix("base_model.model.").removesuffix(".default"): m for n, m in peft.named_modules()
           if n.endswith(".default") and ".lora_" in n}
    for (name, _), A, B in zip(st.trainer.bank.layers, st.trainer.bank.A, st.trainer.bank.B):
        torch.testing.assert_close(A[0], ref[f"{name}.lora_A"].weight, **TOL)
        torch.testing.assert_close(B[0], ref[f"{name}.lora_B"].weight, **TOL)
    after = st.answer(questions)
    assert after == peft_answers(peft, st, questions)
    assert after != before  # the adapter is in effect (else equal answers would prove nothing)


# ----- (b) K together against K alone ------------------------------------------------------------
def group_specs(ctx) -> list[TrainSpec]:
    """Different sizes, learning rates and epochs: they finish at different fused steps."""
    return [TrainSpec(sequences=sentences(ctx, 5), learning_rate=1e-2, epochs=2),
            TrainSpec(sequences=(f"{ctx.title}\n{ctx.context}", *sentences(ctx, 2, 3)), learning_rate=3e-3, epochs=4),
            TrainSpec(),  # no training data: 0 steps, nothing else disturbed
            TrainSpec(sequences=sentences(ctx, 1, 6), learning_rate=2e-2, epochs=1)]


def alone_and_together(st, specs, seeds, queries, pass_tokens: int | None = None):
    """Each spec trained and answered alone, then all together (with ``pass_tokens`` set for the
    fused steps only, if given)."""
    log = record_losses(st)
    alone = []
    for spec, seed in zip(specs, seeds):
        log.clear()
        stats = st.train(spec, seed=seed)
        alone.append((stats, list(log[0]), slot_weights(st, 0), st.respond(queries, QUESTION)))
        st.discard()
    log.clear()
    st.cfg.train.pass_tokens = pass_tokens or st.cfg.train.pass_tokens
    together = st.train_many(specs, seeds)
    answers = st.respond_many([queries] * len(specs) + [queries], QUESTION, list(range(len(specs))) + [-1])
    return alone, together, dict(log), answers


@pytest.mark.parametrize("max_steps,pass_tokens", [(0, None), (3, None), (0, 1)])
def test_k_together_equal_k_alone(tiny_model, ctx, max_steps, pass_tokens):
    """pass_tokens=1: every row of a fused step runs in a pass of its own (the default runs the
    whole step in one or two passes), with the same results."""
    import torch

    st = Student(tiny_cfg(tiny_model, max_steps=max_steps, weight_decay=0.01))
    specs, seeds = group_specs(ctx), [3, 1, 4, 1]
    queries = [Query(q.question, q.answer, 4) for q in ctx.questions]
    base = st.respond(queries, QUESTION)
    alone, together, log, answers = alone_and_together(st, specs, seeds, queries, pass_tokens)
    planned = [6, 8, 0, 1] if not max_steps else [3, 3, 0, 1]
    assert [s.steps for s, *_ in alone] == [s.steps for s in together] == planned
    for k, ((stats, losses, weights, said), got) in enumerate(zip(alone, together)):
        for f in ("steps", "sequences", "real_tokens", "truncated", "too_long", "seed"):
            assert getattr(stats, f) == getattr(got, f), (k, f)
        if stats.steps:
            torch.testing.assert_close([got.first_loss, got.final_loss], [stats.first_loss, stats.final_loss], **TOL)
            torch.testing.assert_close(log[k], losses, **TOL)
        for a, b in zip(slot_weights(st, k), weights):
            torch.testing.assert_close(a, b, **TOL)
        assert answers[k] == said, k
    assert answers[-1] == base  # slot -1 is the bare base model
    assert answers[0] != base  # the adapters are in effect


def test_arc_group_with_an_invalid_edit(tiny_chat_model):
    """adapt_and_score_many on synthetic ARC tasks: a bad edit scores 0 untrained, a failing job
    records its own error, and the valid ones equal their one-at-a-time results."""
    from omegaconf import OmegaConf

    from core.arc.tasks import synthetic_tasks
    from core.contexts import load_contexts
    from core.domains import arc
    from core.jobs import StudentJob
    from student.config import StudentConfig
    from student.scoring import Baselines, adapt_and_score, adapt_and_score_many, make_grader
    from tests.orchestration.test_arc_train import GOOD, arc_student

    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(StudentConfig), arc_student(tiny_chat_model)))
    st = Student(cfg)
    base = Baselines(st, make_grader("f1"), arc)
    t1, t2 = synthetic_tasks(2)
    other = GOOD.replace('"learning_rate": 0.001', '"learning_rate": 0.003').replace('"num_train_epochs": 1',
                                                                                      '"num_train_epochs": 2')
    passage = load_contexts("demo", limit=1)[0]
    jobs = [("a", StudentJob("arc", "edit", (t1,), (GOOD,), seed=5)),
            ("b", StudentJob("arc", "edit", (t2,), ('{"learning_rate": __import__("os")}',), sample=1)),
            ("c", StudentJob("arc", "edit", (t2,), (other,), sample=2, seed=6)),
            ("d", StudentJob("knowledge", "edit", (passage,), ("A fact.",), sample=3))]  # not ARC: raises on its own
    got = adapt_and_score_many(st, base, jobs)
    assert isinstance(got[3], ValueError)
    assert got[1].score == 0.0 and got[1].train["invalid"].startswith("bad_json") and "steps" not in got[1].train
    assert got[0].train["group"] == got[2].train["group"] == 2
    assert got[2].train["steps"] > got[0].train["steps"] > 0
    for i in (0, 2):
        alone = adapt_and_score(st, base, *jobs[i])
        assert alone.verdicts == got[i].verdicts and alone.score == got[i].score and alone.seed == got[i].seed
        for f in ("steps", "sequences", "real_tokens", "n_items"):
            assert alone.train[f] == got[i].train[f], f
        assert alone.train["final_loss"] == pytest.approx(got[i].train["final_loss"], rel=1e-5)


# ----- the pieces --------------------------------------------------------------------------------
def test_chunked_loss_equals_hf_loss(tiny_model, tmp_path):
    """K = 1, no adapter: the per-group loss from hidden states equals ``model(labels=...).loss``,
    also for a gemma3 head with logit soft-capping and chunks much smaller than the batch."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from student.lora_train import token_losses

    gemma = tmp_path / "gemma"
    st = Student(tiny_cfg(tiny_model))
    cfg = Gemma3TextConfig(vocab_size=len(st.tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=2.0,
                           sliding_window=8, pad_token_id=st.tok.pad_token_id)
    torch.manual_seed(0)
    Gemma3ForCausalLM(cfg).save_pretrained(gemma)
    st.tok.save_pretrained(gemma)
    ids = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [20, 21, 22], [30, 31, 32, 33, 34]]
    labels = [list(x) for x in ids]
    labels[2][:3] = [-100] * 3  # a prompt without loss
    for path in (tiny_model, str(gemma)):
        st = Student(tiny_cfg(path, batch_size=3))
        inp, mask, lab = next(st._batches(ids, labels, st.cfg.train, random.Random(0)))
        hf = st.model(input_ids=inp, attention_mask=mask, labels=lab, use_cache=False).loss
        ours = st.trainer.loss_sums(inp, mask, lab, torch.zeros(len(ids), dtype=torch.long), 1)
        torch.testing.assert_close(ours[0] / int((lab[:, 1:] != -100).sum()), hf, **TOL)
        # chunks of 3 tokens, checkpointed: the same losses and the same gradient as one chunk
        vocab = st.model.get_output_embeddings().weight.shape[0]
        h = torch.randn(7, st.model.config.hidden_size, requires_grad=True)
        y = torch.randint(0, vocab, (7,))
        whole = token_losses(st.model, h, y)
        chunked = token_losses(st.model, h, y, chunk_logits=3 * vocab)
        (g_whole,), (g_chunked,) = torch.autograd.grad(whole.sum(), h), torch.autograd.grad(chunked.sum(), h)
        torch.testing.assert_close(chunked, whole, **TOL)
        torch.testing.assert_close(g_chunked, g_whole, **TOL)
    assert cfg.final_logit_softcapping == 2.0 and st.model.config.final_logit_softcapping == 2.0


def test_rows_in_any_order_go_through_their_own_slot(tiny_model):
    """Mixed routing (unequal counts, slots out of order and not consecutive, base rows) gives each
    row what its slot gives it alone; slot -1 is the base model."""
    import torch

    from student.lora_batch import _Plan

    st = Student(tiny_cfg(tiny_model))
    bank = st.trainer.bank_for(4)
    torch.manual_seed(0)
    with torch.no_grad():
        bank.flat.normal_(std=0.3)
    rows = [3, -1, 0, 3, 0, 3]
    for width in (9, 3):  # rows longer than the rank (per-row gather) and shorter (padded blocks)
        ids = torch.randint(3, 500, (6, width))
        with torch.no_grad():
            with bank.route(rows):
                mixed = st.model(input_ids=ids).logits
            for n, s in enumerate(rows):
                with bank.route([s]):
                    alone = st.model(input_ids=ids[n:n + 1]).logits
                torch.testing.assert_close(mixed[n:n + 1], alone, **TOL)
            with bank.route([0, 0, 3, 3]):  # slot by slot, equal counts: the reshape layout
                blocks = st.model(input_ids=ids[[2, 4, 0, 3]]).logits
            torch.testing.assert_close(blocks, mixed[[2, 4, 0, 3]], **TOL)
            assert (mixed[0] - st.model(input_ids=ids[:1]).logits[0]).abs().max() > 1e-2  # slots are not no-ops
    assert _Plan.of([0, 0, 3, 3], "cpu").src is None and _Plan.of([3, 3, 0, 0], "cpu").src is not None


def test_slot_adamw_matches_torch_adamw():
    """Per-slot learning rates and step counts, weight decay, slots leaving early: each slot's
    trajectory is torch.optim.AdamW's on that slot alone, bit for bit."""
    import torch

    from student.lora_batch import SlotAdamW

    torch.manual_seed(0)
    k, n, lrs, steps = 4, 37, [1e-3, 5e-3, 2e-2, 1e-2], [5, 2, 4, 0]
    start = torch.randn(k, n)
    grads = torch.randn(6, k, n)
    param, grad = start.clone(), torch.zeros(k, n)
    opt = SlotAdamW(param, grad, chunk=8)  # 8 elements: chunks of 2 or 8 columns, the last one short
    for t in range(6):
        live = {s: lrs[s] for s in range(k) if t < steps[s]}
        grad.copy_(grads[t])
        opt.step(live, weight_decay=0.1)
    for s in range(k):
        p = torch.nn.Parameter(start[s].clone())
        ref = torch.optim.AdamW([p], lr=lrs[s], weight_decay=0.1)
        for t in range(steps[s]):
            p.grad = grads[t, s].clone()
            ref.step()
        assert torch.equal(param[s], p.detach()), s


def test_export_peft_loads_in_peft_with_equal_logits(tiny_model, ctx, tmp_path):
    import torch
    from peft import PeftModel

    from core.models import load_model

    st = Student(tiny_cfg(tiny_model, learning_rate=1e-2))
    st.train_many([TrainSpec(sequences=sentences(ctx, 3)), TrainSpec(sequences=sentences(ctx, 4, 2))], [0, 1])
    st.export_peft(1, tmp_path / "a1")
    peft = PeftModel.from_pretrained(load_model(tiny_model)[0], str(tmp_path / "a1"))
    enc = st.tok([ctx.context[:120], ctx.title], return_tensors="pt", padding=True)
    with torch.no_grad(), st.trainer.bank.route([1, 1]):
        ours = st.model(**enc).logits
    with torch.no_grad():
        ref = peft(**enc).logits
        with peft.disable_adapter():
            bare = peft(**enc).logits
    real = enc["attention_mask"].bool()  # left pads attend to nothing: their logits are arbitrary
    torch.testing.assert_close(ours[real], ref[real], rtol=1e-5, atol=1e-5)
    assert (ref - bare).abs().max() > 1e-3  # the exported adapter is not a no-op


def test_merge_folds_the_adapter_and_no_merge_keeps_training_it(tiny_model, ctx):
    """Continual mode: merge_adapter makes W = W0 + scale * B @ A and the next adaptation starts
    fresh on the merged base; without merge, W stays W0 and fresh=False trains the same adapter on."""
    import torch

    seqs1, seqs2 = list(sentences(ctx, 3)), list(sentences(ctx, 3, 3))
    merging, keeping, fresh = (Student(tiny_cfg(tiny_model, learning_rate=1e-2)) for _ in range(3))
    w0 = merging.trainer.bank_for(1).layers[0][1].weight.detach().clone()  # the first target linear (q_proj)
    for st in (merging, keeping):
        st.train(seqs1)
    a, b = merging.trainer.bank.A[0][0].detach().clone(), merging.trainer.bank.B[0][0].detach().clone()
    torch.testing.assert_close(keeping.trainer.bank.B[0][0], b, rtol=0, atol=0)  # the same first adaptation

    merging.merge_adapter()
    merged = merging.trainer.bank.layers[0][1].weight.detach()
    torch.testing.assert_close(merged, w0 + merging.trainer.bank.scale * b @ a, **TOL)
    assert (merged - w0).abs().max() > 1e-4
    merging.train(seqs2, fresh=True)
    keeping.train(seqs2, fresh=False)
    fresh.train(seqs2)
    assert torch.equal(keeping.trainer.bank.layers[0][1].weight, w0)  # never merged
    # the kept adapter went on from the first one; the merged student's new adapter started fresh
    # (so its A moved away from the same init as the fresh student's, on a different base)
    continued, new, alone = (s.trainer.bank.B[0][0].detach() for s in (keeping, merging, fresh))
    assert (continued - alone).abs().max() > 1e-4 and (new - alone).abs().max() > 1e-6
    assert (continued - b).abs().max() > 1e-4  # and it did train further


def test_train_changes_the_output_on_its_text(tiny_model, ctx):
    import torch

    st = Student(tiny_cfg(tiny_model, epochs=20, learning_rate=1e-2))
    text = f"{ctx.title}\n{ctx.context}"
    enc = st.tok([text], return_tensors="pt")

    def loss():
        with torch.no_grad(), st._route([st._slot()]):
            return st.model(**enc, labels=enc["input_ids"]).loss.item()

    before = loss()
    with st.adapted([text]):
        during = loss()
    after = loss()
    assert during < before - 0.1  # it learned its text (6.40 -> 6.1 on this random tiny model)
    assert after == before  # and discarding restored the base model exactly


def test_long_rows_in_padded_slot_blocks_match_runs(tiny_model):
    """The layout a GPU uses for long rows in any order (padded slot blocks, a constant number of
    kernels) gives what the CPU's matmul per run of rows gives, forward and gradients."""
    import torch

    st = Student(tiny_cfg(tiny_model))
    bank = st.trainer.bank_for(4)
    torch.manual_seed(0)
    with torch.no_grad():
        bank.flat.normal_(std=0.3)
    rows, ids = [3, -1, 0, 3, 0, 3], torch.randint(3, 500, (6, 9))
    got = []
    for runs in (True, False):
        bank.runs_for_long_rows = runs
        with bank.route(rows):
            loss = st.model(input_ids=ids).logits.float().pow(2).mean()
        with bank.quiet_backward():
            loss.backward()
        got.append((loss.detach(), bank.grad.clone()))
        bank.grad.zero_()
    assert got[0][1].abs().max() > 0  # the slots' gradients are there to compare
    torch.testing.assert_close(got[1][0], got[0][0], **TOL)
    torch.testing.assert_close(got[1][1], got[0][1], **TOL)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_k_together_equal_k_alone_in_bf16(tiny_model, ctx, device):
    """K together = K alone where the student computes in bf16 (the dtype `auto` picks on a GPU and on
    this CPU), at bf16's tolerance: losses within 2%, each slot's trained weights within 2% of their
    norm (AdamW turns rounding noise in near-zero gradients into whole steps, so a few elements may
    differ by more). Prints whether two runs of the same group gave the very same weights."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cfg = tiny_cfg(tiny_model, dtype="bf16", weight_decay=0.01)
    cfg.device = device
    st = Student(cfg)
    specs, seeds = group_specs(ctx), [3, 1, 4, 1]
    queries = [Query(q.question, q.answer, 4) for q in ctx.questions]
    alone, together, log, _ = alone_and_together(st, specs, seeds, queries)
    for k, ((stats, losses, weights, _), got) in enumerate(zip(alone, together)):
        assert stats.steps == got.steps
        if stats.steps:
            torch.testing.assert_close(log[k], losses, rtol=2e-2, atol=1e-3)
        a, b = torch.cat([w.flatten() for w in slot_weights(st, k)]), torch.cat([w.flatten() for w in weights])
        assert (a - b).norm() <= 2e-2 * b.norm(), k
    first = [slot_weights(st, k) for k in range(len(specs))]
    st.train_many(specs, seeds)
    again = [slot_weights(st, k) for k in range(len(specs))]
    same = all(torch.equal(x, y) for a, b in zip(first, again) for x, y in zip(a, b))
    print(f"\n{device} bf16: two runs of the same group {'gave identical' if same else 'differed in their'} weights")
