"""Self-edit prompts: the instruction the teacher reads before writing an edit.

The variants follow SEAL's knowledge-incorporation prompts (implications, longer implications,
rewrites, self-QA), written in our own words, plus atomic facts (one fact per line, the form SEAL's
RL converged to). A template is one plain string with ``{title}`` and
``{context}`` placeholders that ends with a cue line ("Implications:"): a base model continues
after the cue, and a chat model gets the same text as one user turn (the cue then reads as the
heading of the answer it should write). One string per variant, for both kinds of model, so a user
template is written once and works for either.

The rendered prompt is stored with every edit (the ReST^EM update trains on exactly that prompt,
or, for an edit sampled under an explored template, on the canonical prompt stored beside it), so `render` is a pure function of its arguments. `tokenize_prompt` is the one way a rendered prompt
becomes token ids, for generation and for the SFT update alike.
"""

from __future__ import annotations

import string

_PASSAGE = "Title: {title}\nPassage: {context}\n\n"

TEMPLATES: dict[str, str] = {
    "implications": (
        "Read the passage below and write down what follows from it: the facts it states and the "
        "consequences one can infer from them. Put one implication per line, each a complete "
        "sentence that makes sense without the passage.\n\n" + _PASSAGE + "Implications:\n"
    ),
    "implications-long": (
        "Read the passage below and write a long list of its implications: the facts it states, "
        "what they imply, and how they connect to each other. Give each implication its own line "
        "and explain it in two or three full sentences that make sense without the passage.\n\n"
        + _PASSAGE + "Implications:\n"
    ),
    "implications-very-long": (
        "Read the passage below and write an extensive, detailed list of its implications. Cover "
        "every name, number, date, place and event it mentions, what each one implies, and the "
        "relations between them. Give each implication its own line and explain it thoroughly in "
        "full sentences that make sense without the passage.\n\n" + _PASSAGE + "Implications:\n"
    ),
    "rewrite": (
        "Rewrite the passage below in different words. Write several versions; each must keep every "
        "fact of the original but change the wording and the sentence structure. Separate the "
        "versions with a blank line.\n\n" + _PASSAGE + "Rewrites:\n"
    ),
    "self-qa": (
        "Write pairs of questions and answers that test the facts in the passage below. Each "
        "question must make sense without the passage, and each answer must be short. Write every "
        "pair as two lines, 'Question: ...' and then 'Answer: ...'.\n\n" + _PASSAGE
        + "Questions and answers:\n"
    ),
    "atomic-facts": (
        "Break the passage below into atomic facts: short, simple sentences that each state exactly "
        "one fact from it. Name people, places and things in full in every sentence, so that each "
        "one makes sense on its own. Put one fact per line and leave out nothing.\n\n" + _PASSAGE
        + "Facts:\n"
    ),
}

# ARC (domain 'arc'): {title} is the task id and {context} its demonstrations and test input as
# text (`core.arc.ttt.format_prompt`). The edit is a JSON object, parsed strictly by
# the student (`core.arc.schema`). 'arc-config' shows one example of the format, for
# teachers that write the JSON unaided; its values are not a recommendation, but a small teacher
# copies them. 'arc-options' lists the keys and their ranges with no example: it is meant for
# teacher.generation.constrain=true, where the decoder enforces the format and the prompt need
# only say what the choices mean.
_ARC_TASK = ("Below is a puzzle: grids of digits, where each input grid is turned into its output grid by "
             "one rule. A small model will be fine-tuned on these examples before it solves the last input. ")
_ARC_CUE = "Puzzle {title}:\n{context}\n\nTraining configuration (JSON):\n"
TEMPLATES["arc-config"] = (
    _ARC_TASK + "Choose how to train it: which data augmentations to use, whether to train on all tokens or "
    "only on the output grids, the learning rate and the number of epochs. Answer with one JSON object "
    "and nothing else, with exactly these keys, for example:\n"
    '{{"use_basic_augmentations": true, "use_size_augmentations": false, "use_chain_augmentations": '
    'false, "use_repeat_augmentations": false, "strategy": "train_using_all_tokens", '
    '"learning_rate": 0.001, "num_train_epochs": 2}}\n\n' + _ARC_CUE
)
TEMPLATES["arc-options"] = (
    _ARC_TASK + "Choose how to train it, as one JSON object with these keys:\n"
    "- use_basic_augmentations: true or false (also train on rotated, flipped and transposed copies)\n"
    "- use_size_augmentations: true or false (also train on upscaled copies)\n"
    "- use_chain_augmentations: true or false (rotations and flips followed by upscaling)\n"
    "- use_repeat_augmentations: true or false (grids tiled twice)\n"
    '- strategy: "train_using_all_tokens" or "train_using_output_tokens"\n'
    "- learning_rate: from 0.0001 to 0.005\n"
    "- num_train_epochs: from 1 to 10\n\n" + _ARC_CUE
)

_FIELDS = {"title", "context"}


def _check(name: str, text: str) -> None:
    """A template must contain {context} and no placeholder other than {title} and {context}."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as e:  # unmatched or malformed braces
        raise ValueError(f"self-edit template '{name}' is malformed ({e}); write {{{{ and }}}} for "
                         f"literal braces") from None
    bad = sorted({f for f in fields if f not in _FIELDS})
    if bad:
        raise ValueError(f"self-edit template '{name}' has placeholders {bad}; only {{title}} and "
                         f"{{context}} are filled in (write {{{{ and }}}} for literal braces)")
    if "context" not in fields:
        raise ValueError(f"self-edit template '{name}' has no {{context}} placeholder: the teacher "
                         f"would never see the passage")


def template_text(name: str, extra: dict[str, str]) -> str:
    """The template called ``name``: a built-in or one of ``extra`` (``teacher.templates``).

    User templates may not reuse a built-in's name: edits record the template name, and a name
    that meant two different prompts in two runs would make their edits look comparable.
    """
    shadowed = sorted(set(extra) & set(TEMPLATES))
    if shadowed:
        raise ValueError(f"teacher.templates may not redefine built-in template(s) {shadowed}; "
                         f"give your template a new name and select it with teacher.prompt=NAME")
    for user_name, text in extra.items():
        _check(user_name, text)
    if name in TEMPLATES:
        return TEMPLATES[name]
    if name in extra:
        return extra[name]
    avail = ", ".join(list(TEMPLATES) + sorted(extra))
    raise ValueError(f"unknown self-edit template '{name}'; available: {avail}. Add one with "
                     f"teacher.templates.NAME='... {{title}} ... {{context}} ...' and select it "
                     f"with teacher.prompt=NAME")


def render(name: str, extra: dict[str, str], title: str, context: str, tokenizer, chat: bool) -> str:
    """The exact prompt string the teacher is fed for one passage (deterministic).

    Plain prompts end with the template's cue line; chat prompts are the same text as a single
    user turn, followed by the template's generation prompt (the opening of the assistant turn).
    """
    text = template_text(name, extra).format(title=title, context=context)
    if not chat:
        return text
    # The trailing newline after the cue belongs to plain continuation; in a chat turn the
    # template adds its own end-of-turn layout.
    msgs = [{"role": "user", "content": text.rstrip()}]
    return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def templates_of(cfg) -> list[str]:
    """Every template a teacher config (``TeacherConfig``) renders: the canonical ``prompt``, then
    the explored ones."""
    return list(dict.fromkeys([cfg.prompt, *cfg.explore]))


def template_of(cfg, sample: int) -> str:
    """The template training edit ``sample`` of a context is written under (``teacher.explore``)."""
    return cfg.explore[sample % len(cfg.explore)] if cfg.explore else cfg.prompt


def tokenize_prompt(tokenizer, text: str, chat: bool) -> list[int]:
    """Token ids of a rendered prompt: the one way prompts become ids (generation and SFT).

    A chat-rendered string already holds every special token the template wants (Gemma's template,
    for one, starts with ``<bos>``); letting the tokenizer add its own would put a second BOS in
    front, a sequence the model never saw in training. A plain prompt has none, so the tokenizer
    adds them (e.g. Gemma's BOS) as it would for any text.
    """
    return tokenizer(text, add_special_tokens=not chat)["input_ids"]


def prompt_tokenizer(cfg, cache: str | None = None, key: str = "teacher"):
    """(tokenizer, chat) of the teacher ``cfg`` (a TeacherConfig) without its weights: enough to render
    and count prompts before any work. A built-in is materialised (or its cached folder reused); an
    adapter version (a shipped teacher among them) uses its root model's tokenizer."""
    from pathlib import Path

    from transformers import AutoTokenizer

    from core import catalog
    from core.config import ConfigError
    from core.models import uses_chat
    from teacher.versions import root_model

    model = root_model(cfg.model)  # an adapter version uses its root's tokenizer
    folder = Path(model).expanduser()
    path = str(folder) if folder.is_dir() else catalog.resolve(model, catalog.cache_dir(cache))
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    try:
        return tok, uses_chat(tok, cfg.chat, f"{key}.chat")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_prompt_lengths(cfg, contexts, domain, tokenizer, chat: bool, key: str = "teacher",
                         data_key: str = "data") -> None:
    """Refuse contexts whose teacher prompt is longer than ``cfg.max_prompt_tokens`` tokens, naming
    that bound's key (``key`` is the teacher node's dotted path) and where the contexts come from
    (``data_key``). The prompts are rendered exactly as generation renders them."""
    from core.config import ConfigError

    bound = cfg.max_prompt_tokens
    over = []
    for c in contexts:
        n = max(len(tokenize_prompt(tokenizer, render(t, cfg.templates, *domain.prompt_fields(c), tokenizer, chat),
                                    chat)) for t in templates_of(cfg))
        if n > bound:
            over.append((c.title, n))
    if over:
        title, n = max(over, key=lambda x: x[1])
        raise ConfigError(f"{len(over)} context(s) of {data_key} make teacher prompts longer than "
                          f"{key}.max_prompt_tokens={bound} (the longest, '{title[:60]}', is {n} tokens); drop or "
                          f"shorten those passages ({data_key}.source/offset/limit/ids), or raise "
                          f"{key}.max_prompt_tokens if the model's context length allows it")
