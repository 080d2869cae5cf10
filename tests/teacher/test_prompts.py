"""Self-edit prompt templates: rendering for base and chat tokenizers, user templates, errors, and the
one tokenisation path (no doubled BOS for chat-rendered text)."""

from __future__ import annotations

import pytest

from teacher.prompts import TEMPLATES, render, template_text, tokenize_prompt

TITLE, PASSAGE = "The Vell Lighthouse", "The Vell lighthouse was lit in 1871 by keeper Ada Morrow."
CUES = {"implications": "Implications:\n", "implications-long": "Implications:\n",
        "implications-very-long": "Implications:\n", "rewrite": "Rewrites:\n",
        "self-qa": "Questions and answers:\n", "atomic-facts": "Facts:\n", "arc-config": "Training configuration (JSON):\n",
        "arc-options": "Training configuration (JSON):\n"}


@pytest.fixture(scope="module")
def base_tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def chat_tok(tiny_chat_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_chat_model)


def test_builtins_are_the_documented_variants():
    assert set(TEMPLATES) == set(CUES)


@pytest.mark.parametrize("name", sorted(CUES))
def test_plain_prompt_holds_passage_and_ends_with_cue(name, base_tok):
    text = render(name, {}, TITLE, PASSAGE, base_tok, chat=False)
    assert TITLE in text and PASSAGE in text
    assert text.endswith(CUES[name])


@pytest.mark.parametrize("name", sorted(CUES))
def test_chat_prompt_is_one_user_turn(name, chat_tok):
    text = render(name, {}, TITLE, PASSAGE, chat_tok, chat=True)
    assert TITLE in text and PASSAGE in text
    assert text.startswith("<|user|>") and text.count("<|user|>") == 1
    assert text.endswith("<|assistant|>")  # the generation prompt opens the answer
    assert CUES[name].strip() in text


def test_render_is_deterministic(chat_tok, base_tok):
    for tok, chat in [(base_tok, False), (chat_tok, True)]:
        first = render("implications", {}, TITLE, PASSAGE, tok, chat)
        assert render("implications", {}, TITLE, PASSAGE, tok, chat) == first


def test_passage_braces_are_not_placeholders(base_tok):
    text = render("implications", {}, "A {set}", "Write {x} and }{ here.", base_tok, chat=False)
    assert "A {set}" in text and "Write {x} and }{ here." in text


def test_user_template(base_tok):
    extra = {"facts": "Facts about {title} ({{literal}}):\n{context}\nFacts:\n"}
    assert template_text("facts", extra) == extra["facts"]
    text = render("facts", extra, TITLE, PASSAGE, base_tok, chat=False)
    assert text == f"Facts about {TITLE} ({{literal}}):\n{PASSAGE}\nFacts:\n"


@pytest.mark.parametrize("extra, name, needle", [
    ({}, "nope", "unknown self-edit template 'nope'"),
    ({}, "nope", "teacher.templates.NAME"),
    ({"mine": "{context}"}, "nope", "mine"),  # the user's templates are listed as available
    ({"implications": "{context}"}, "implications", "may not redefine built-in"),
    ({"bad": "About {topic}: {context}"}, "bad", "template 'bad' has placeholders ['topic']"),
    ({"pos": "{} {context}"}, "pos", "template 'pos' has placeholders"),
    ({"attr": "{context.upper}"}, "attr", "template 'attr' has placeholders"),
    ({"blind": "Write about {title}."}, "blind", "template 'blind' has no {context}"),
    ({"open": "Passage: {context"}, "open", "template 'open' is malformed"),
    ({"broken": "{context} }"}, "implications", "template 'broken' is malformed"),  # checked even if unused
])
def test_template_errors(extra, name, needle):
    with pytest.raises(ValueError) as e:
        template_text(name, extra)
    assert needle in str(e.value)


@pytest.fixture(scope="module")
def bos_chat_tok():
    """A Gemma-like tokenizer: it adds <bos> to any text, and its chat template writes <bos> too."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    fast.chat_template = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}"
                          "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
    return fast


def test_tokenize_prompt_does_not_double_bos(bos_chat_tok):
    bos = bos_chat_tok.bos_token_id
    chat_text = render("implications", {}, TITLE, PASSAGE, bos_chat_tok, chat=True)
    assert chat_text.startswith("<bos>")
    ids = tokenize_prompt(bos_chat_tok, chat_text, chat=True)
    assert ids[0] == bos and ids.count(bos) == 1
    # The trap it avoids: the tokenizer's own BOS on top of the template's.
    assert bos_chat_tok(chat_text)["input_ids"][:2] == [bos, bos]
    plain_text = render("implications", {}, TITLE, PASSAGE, bos_chat_tok, chat=False)
    plain = tokenize_prompt(bos_chat_tok, plain_text, chat=False)
    assert plain[0] == bos and plain.count(bos) == 1
