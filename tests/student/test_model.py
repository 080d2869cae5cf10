"""Adapt-and-score on tiny in-process models: mechanics, determinism, adapter discarded."""

import pytest

from core.contexts import load_contexts
from core.jobs import StudentJob
from student.config import StudentConfig
from student.model import Student
from student.scoring import Baselines, adapt_and_score, make_grader


def tiny_cfg(path, **train):
    cfg = StudentConfig(model=path, threads=1)
    cfg.answer.max_new_tokens = 4
    cfg.lora.r, cfg.lora.alpha = 4, 8
    for k, v in {"epochs": 2, "batch_size": 2, "dtype": "fp32", **train}.items():
        setattr(cfg.train, k, v)
    return cfg


@pytest.fixture(scope="module")
def ctx():
    return load_contexts("demo", limit=1)[0]


def test_adapt_and_score_smoke(tiny_model, ctx):
    st = Student(tiny_cfg(tiny_model))
    assert st.chat is False
    base = Baselines(st, make_grader("f1"))
    r = adapt_and_score(st, base, "k", StudentJob("knowledge", "edit", (ctx,), ("A fact.\nAnother fact.",)))
    assert r.condition == "edit" and r.key == "k" and len(r.verdicts) == len(ctx.questions)
    assert 0.0 <= r.score <= 1.0 and r.baseline_score == base.get(ctx)[1]
    assert r.train["learning_rate"] == 1e-3  # a folder, not a built-in: the general default, recorded
    assert r.train["sequences"] == 3 and r.train["n_items"] == 2  # 2 items + passage
    assert r.train["steps"] == 4  # 2 epochs x ceil(3 / 2)
    assert r.train["real_tokens"] > 0 and r.timings["train_s"] > 0


def test_training_is_deterministic_and_lowers_loss(tiny_model, ctx):
    st = Student(tiny_cfg(tiny_model, epochs=8, learning_rate=1e-2))
    seqs = [f"{ctx.title}\n{ctx.context}"]
    a = st.train(seqs)
    st.discard()
    b = st.train(seqs)
    st.discard()
    assert a.first_loss == b.first_loss and a.final_loss == b.final_loss
    assert a.final_loss < a.first_loss


def test_train_makes_its_training_text_more_likely(tiny_model, ctx):
    """train() changes the model, and the right way: under the trained adapter every token of the
    training text is more likely than under the base model (on this random tiny model the mean
    log-probability goes -6.38 -> -6.09), while an unrelated text's barely moves. A train() that
    left the model alone, or an adapter the forward pass never went through, would fail."""
    import torch

    st = Student(tiny_cfg(tiny_model, epochs=10, learning_rate=1e-2))
    text = ctx.context.split(".")[0] + "."
    other = load_contexts("demo", limit=2)[1].context.split(".")[0] + "."

    def token_logprobs(t: str):
        enc = st.tok([t], return_tensors="pt")
        with torch.no_grad(), st._route([st._slot()]):
            logits = st.model(**enc).logits[0, :-1].float()
        return logits.log_softmax(-1).gather(1, enc["input_ids"][0, 1:, None])[:, 0]  # (tokens - 1,)

    before, other_before = token_logprobs(text), token_logprobs(other)
    stats = st.train([text])
    after, other_after = token_logprobs(text), token_logprobs(other)
    gain = (after.mean() - before.mean()).item()
    assert stats.steps == 10 and st._slot() == 0
    assert gain > 0.1
    assert (after > before).float().mean() >= 0.9
    assert abs((other_after.mean() - other_before.mean()).item()) < gain / 4


def test_adapter_is_discarded(tiny_model, ctx):
    st = Student(tiny_cfg(tiny_model, epochs=4, learning_rate=5e-2))
    qs = [q.question for q in ctx.questions]
    before = st.answer(qs)
    with st.adapted([ctx.context] * 4):
        pass
    assert st.answer(qs) == before


def test_padding_carries_no_loss(tiny_model):
    import torch

    st = Student(tiny_cfg(tiny_model))
    ids = [[5, 6, 7, 8, 9], [5, 6]]
    import random

    st.cfg.train.batch_size = 2
    batches = list(st._batches(ids, [list(x) for x in ids], st.cfg.train, random.Random(0)))
    inp, mask, labels = batches[0]
    assert inp.shape == (2, 5)  # padded to the longest in the batch, not to a fixed length
    assert (labels[mask == 0] == -100).all() and (labels[mask == 1] != -100).all()
    assert int(mask.sum()) == 7
    assert torch.equal(labels[mask == 1], inp[mask == 1])


def test_pairs_put_loss_on_the_target_only_unless_prompt_loss(tiny_chat_model):
    """A (prompt, target) pair is rendered like a raw query (chat template here); its prompt tokens
    carry no loss unless the spec asks for it; a pair over max_length is left out and counted."""
    from core.domains.spec import TrainSpec

    st = Student(tiny_cfg(tiny_chat_model, max_length=64))
    spec = TrainSpec(pairs=(("input:\n01\noutput:\n", "10\n\n"), ("x " * 200, "1")))
    ids, labels, _, too_long = st._encode(spec, 64)
    prompt = st.tok(st.raw_prompt("input:\n01\noutput:\n"), add_special_tokens=False)["input_ids"]
    assert too_long == 1 and len(ids) == 1 and ids[0][:len(prompt)] == prompt
    assert labels[0][:len(prompt)] == [-100] * len(prompt) and labels[0][len(prompt):] == ids[0][len(prompt):]
    ids2, labels2, _, _ = st._encode(TrainSpec(pairs=spec.pairs[:1], prompt_loss=True), 64)
    assert labels2 == ids2
    stats = st.train(TrainSpec(pairs=spec.pairs, learning_rate=1e-2, epochs=2))
    assert stats.steps == 2 and stats.too_long == 1
    st.discard()


def test_truncation_is_counted(tiny_model):
    st = Student(tiny_cfg(tiny_model, max_length=8, epochs=1))
    stats = st.train(["word " * 50, "short"])
    assert stats.truncated == 1


def test_chat_decided_from_tokenizer_with_override(tiny_chat_model, tiny_model):
    assert Student(tiny_cfg(tiny_chat_model)).chat is True
    cfg = tiny_cfg(tiny_chat_model)
    cfg.chat = False
    st = Student(cfg)
    assert st.chat is False and st.prompt("Q?").endswith("Question: Q?\nAnswer:")
    cfg = tiny_cfg(tiny_model)
    cfg.chat = True
    with pytest.raises(ValueError, match="no chat template"):
        Student(cfg)


def test_chat_prompt_uses_template(tiny_chat_model):
    st = Student(tiny_cfg(tiny_chat_model))
    p = st.prompt("Who?")
    assert p.startswith("<|user|>") and p.endswith("<|assistant|>") and "Question: Who?" in p
