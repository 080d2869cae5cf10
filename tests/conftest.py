"""Shared fixtures. Tiny models are built in process (a BPE tokenizer trained on the demo passages
and a 2-layer Llama from a config) and saved as a local checkpoint folder, so the same loading path
as real checkpoints is exercised and no test needs the network."""

from __future__ import annotations

import pytest

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def build_tiny_checkpoint(path, chat: bool) -> str:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from core.contexts import demo_records

    texts = [f"{r['title']}\n{r['context']}" for r in demo_records()]
    texts += [q["question"] + " " + q["answer"] for r in demo_records() for q in r["questions"]]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<pad>", "<eos>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id, bos_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """Folder of a tiny base (no chat template) causal LM."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-base"), chat=False)


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory) -> str:
    """Folder of a tiny causal LM whose tokenizer has a chat template."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-chat"), chat=True)
