"""Teacher generation on tiny in-process models: shapes and order, seeding, stopping and token counts,
and backend selection."""

from __future__ import annotations

import pytest

from teacher.backend import Generation
from teacher.config import TeacherConfig
from teacher.transformers_backend import TransformersBackend, finish, make_backend
from teacher.prompts import render

PROMPTS = ["Vell lighthouse facts.", "A", "The keeper of the lighthouse, and what she wrote in 1871 about it."]


def config(model: str, **gen) -> TeacherConfig:
    cfg = TeacherConfig(model=model)
    for k, v in {"max_new_tokens": 8, "batch_size": 4, "dtype": "fp32", **gen}.items():
        setattr(cfg.generation, k, v)
    return cfg


@pytest.fixture(scope="module")
def backend(tiny_model):
    b = TransformersBackend(tiny_model, config(tiny_model))
    yield b
    b.close()


def test_one_list_of_n_per_prompt(backend):
    out = backend.generate(PROMPTS, 3, seed=1)  # 9 sequences in batches of 4: batches span prompts
    assert [len(gens) for gens in out] == [3, 3, 3]
    for gens in out:
        for g in gens:
            assert isinstance(g, Generation) and 1 <= g.n_tokens <= 8
            assert g.finished or g.n_tokens == 8


def test_prompt_order_survives_length_sorting(tiny_model):
    # Greedy at batch 1 (no padding): each prompt's edit must match the one it gets on its own.
    b = TransformersBackend(tiny_model, config(tiny_model, batch_size=1))
    together = b.generate(PROMPTS, 1, greedy=True)
    alone = [b.generate([p], 1, greedy=True)[0] for p in PROMPTS]
    assert together == alone
    assert len({gens[0].text for gens in together}) == len(PROMPTS)  # the check can tell them apart


def test_same_seed_same_edits_other_seed_other_edits(backend):
    a = backend.generate(PROMPTS, 2, seed=7)
    assert backend.generate(PROMPTS, 2, seed=7) == a
    assert backend.generate(PROMPTS, 2, seed=8) != a


def test_greedy_needs_n_1(backend):
    with pytest.raises(ValueError, match="n=1"):
        backend.generate(PROMPTS, 2, greedy=True)


def test_stops_include_eos(backend):
    assert backend.tokenizer.eos_token_id in backend.stops


@pytest.mark.parametrize("row, expected", [
    ([5, 6, 1, 0, 0], (3, True)),  # pads after the EOS are not counted
    ([5, 1, 6, 1], (2, True)),  # the first stop ends the edit
    ([5, 6, 7], (3, False)),  # cut by max_new_tokens
    ([9, 5], (1, True)),  # a second stop id (an end-of-turn token)
])
def test_finish_counts_up_to_the_end(backend, row, expected):
    g = finish(backend.tokenizer, row, {1, 9})
    assert (g.n_tokens, g.finished) == expected


def test_generation_stops_at_stop_tokens(tiny_model):
    # Random weights rarely pick EOS, so make half the vocabulary stop tokens: sequences in a batch
    # then end at different steps, and the ones that end early are padded after their end.
    b = TransformersBackend(tiny_model, config(tiny_model, max_new_tokens=12, batch_size=8))
    b.stops = list(range(0, len(b.tokenizer), 2))
    gens = [g for gens in b.generate(PROMPTS, 4, seed=3) for g in gens]
    assert all(g.finished or g.n_tokens == 12 for g in gens)
    assert len({g.n_tokens for g in gens}) > 1
    b.stops = list(range(len(b.tokenizer)))  # every token ends the edit
    assert {(g.n_tokens, g.finished) for gens in b.generate(PROMPTS, 2, seed=3) for g in gens} == {(1, True)}


def test_chat_model_generates_from_rendered_prompts(tiny_chat_model):
    b = make_backend(tiny_chat_model, config(tiny_chat_model, dtype="auto"))
    assert b.chat
    prompt = render("implications", {}, "Vell", "The Vell lighthouse was lit in 1871.", b.tokenizer, b.chat)
    out = b.generate([prompt], 2, seed=0)
    assert len(out) == 1 and len(out[0]) == 2


@pytest.mark.parametrize("backend_name, error, needle", [
    ("hf", ValueError, "teacher.generation.backend must be one of transformers, vllm"),
])
def test_make_backend_errors(tiny_model, backend_name, error, needle):
    with pytest.raises(error, match=needle):
        make_backend(tiny_model, config(tiny_model, backend=backend_name))


def test_bad_dtype_names_the_key(tiny_model):
    with pytest.raises(ValueError, match="teacher.generation.dtype"):
        make_backend(tiny_model, config(tiny_model, dtype="fp16"))


@pytest.mark.parametrize("top_p, nucleus", [(0.7, [0.4, 0.3]), (0.75, [0.4, 0.3, 0.2]), (1.0, [0.4, 0.3, 0.2, 0.1])])
def test_nucleus_sampler_draws_the_renormalised_nucleus(top_p, nucleus):
    import torch

    from teacher.transformers_backend import NucleusSampler

    rows = 40_000
    scores = torch.tensor([[0.1, 0.4, 0.2, 0.3]]).log().repeat(rows, 1)  # token order != probability order
    torch.manual_seed(0)
    out = NucleusSampler(1.0, top_p)(None, scores)
    assert ((out == 0).sum(-1) == 1).all() and torch.isinf(out).sum() == rows * 3  # one-hot rows
    freq = torch.bincount(out.argmax(-1), minlength=4).double() / rows
    expected = torch.zeros(4, dtype=torch.double)
    for prob in nucleus:
        expected[[0.1, 0.4, 0.2, 0.3].index(prob)] = prob / sum(nucleus)
    assert torch.allclose(freq, expected, atol=0.01)


def test_nucleus_sampler_temperature():
    import torch

    from teacher.transformers_backend import NucleusSampler

    torch.manual_seed(0)
    scores = torch.tensor([[0.0, 1.0]]).repeat(40_000, 1)
    freq = NucleusSampler(0.5, 1.0)(None, scores).argmax(-1).double().mean()  # P(1) = e^2 / (1 + e^2)
    assert abs(freq.item() - torch.tensor(2.0).exp().item() / (1 + torch.tensor(2.0).exp().item())) < 0.01


# ----- constrained decoding (teacher.generation.constrain) ------------------------------------------
CHOICES = ['{"a": true, "n": 1}', '{"a": true, "n": 10}', '{"a": false, "n": 2}', "lighthouse keeper"]


def test_choice_constraint_masks_all_but_the_trie_children_and_stops_at_the_end():
    import torch

    from teacher.transformers_backend import ChoiceConstraint

    trie = {5: {6: {ChoiceConstraint.END: {}}, 7: {8: {ChoiceConstraint.END: {}}}}, 9: {ChoiceConstraint.END: {}}}
    c = ChoiceConstraint(trie, stops=[0], start=2)
    prompt = [[3, 4]] * 4
    rows = torch.tensor([p + g for p, g in zip(prompt, [[5, 7], [5, 6], [9, 0], [5, 5]])])  # mid, done, stopped, off
    out = c(rows, torch.zeros(4, 12))
    allowed = [set(torch.nonzero(r > float("-inf")).flatten().tolist()) for r in out]
    assert allowed[0] == {8}  # only the child on the way to a choice
    assert allowed[1] == {0}  # a complete choice: only a stop token
    assert allowed[2] == set(range(12)) == allowed[3]  # off the trie (stopped): left alone
    first = c(torch.tensor([[3, 4]]), torch.zeros(1, 12))
    assert set(torch.nonzero(first[0] > float("-inf")).flatten().tolist()) == {5, 9}


@pytest.mark.parametrize("chat", [False, True])
def test_constrained_edits_are_always_one_of_the_choices(tiny_model, tiny_chat_model, chat):
    model = tiny_chat_model if chat else tiny_model
    b = TransformersBackend(model, config(model, max_new_tokens=24, temperature=2.0))
    prompts = [render("implications", {}, "T", p, b.tokenizer, b.chat) for p in PROMPTS]
    out = b.generate(prompts, 6, seed=3, choices=CHOICES)
    texts = [g.text for gens in out for g in gens]
    assert set(texts) <= set(CHOICES) and all(g.finished for gens in out for g in gens)
    assert len(set(texts)) >= 3  # sampled from the model's distribution over the choices, not one fixed pick
    assert b.generate(prompts, 6, seed=3, choices=CHOICES) == out  # seeded
    greedy = b.generate(prompts[:1], 1, greedy=True, choices=CHOICES)[0][0]
    assert greedy.text in CHOICES and greedy.finished


def test_constrained_format_longer_than_max_new_tokens_is_refused(tiny_model):
    b = TransformersBackend(tiny_model, config(tiny_model, max_new_tokens=3))
    with pytest.raises(ValueError, match="teacher.generation.max_new_tokens=3 is too few"):
        b.generate(["x"], 1, greedy=True, choices=CHOICES)
