"""Loading a causal LM and its tokenizer by name, and deciding how to prompt it.

Shared by the teacher and the student sides, hence in the base layer. Chat vs plain prompting is
decided from the model itself (does its tokenizer have a chat template?) with a config override,
never from a hard-coded list of names.
"""

from __future__ import annotations

from orchestration.core import catalog


def load_model(model: str, *, cache: str | None = None, trust_remote_code: bool = False):
    """Return (model, tokenizer) in fp32 eval mode; the tokenizer pads on the left for generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = catalog.resolve(model, catalog.cache_dir(cache))
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    lm.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return lm, tok


def uses_chat(tokenizer, override: bool | None) -> bool:
    """Prompt through the chat template? The override wins; else: does the tokenizer have one."""
    if override is not None:
        if override and not getattr(tokenizer, "chat_template", None):
            raise ValueError("student.chat=true but this tokenizer has no chat template; set chat: false")
        return override
    return bool(getattr(tokenizer, "chat_template", None))

