"""Real-shape, random-weight models for the speed benches, built from shape dicts in code.

Speed does not depend on the weights, and a GPU machine without network has neither the GGUF
packages the built-ins are materialised from nor a hub to fetch a config. So a bench can build the
model from the dicts below (the built-ins' own configs, and Qwen2.5-0.5B's from its model card), with
random weights and a tokenizer found on disk. Accuracy on such a model means nothing.

``tiny`` is SmolLM2-135M's depth and layout (30 Llama layers, the same 7 linears each, the same
vocabulary) at width 64: compute is almost free, so what is left of a training step is its overhead.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from _common import REPO, shared

_SMOLLM2 = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
            "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
            "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}}

SHAPES: dict[str, dict] = {
    "tiny": {**_SMOLLM2, "hidden_size": 64, "intermediate_size": 192, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16},
    "smollm2-135m": _SMOLLM2,
    "qwen2.5-0.5b": {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
                     "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
    "gemma3-270m": {"model_type": "gemma3_text", "hidden_size": 640, "intermediate_size": 2048,
                    "num_hidden_layers": 18, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256,
                    "vocab_size": 262144, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
                    "query_pre_attn_scalar": 256, "sliding_window": 512, "tie_word_embeddings": True,
                    "hidden_activation": "gelu_pytorch_tanh",
                    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
                    "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
}

# where each shape's tokenizer may lie: gemma3 needs its own 262k-token one; the others fit SmolLM2's
# 49,152 ids (shared/gpu/smollm2-tokenizer is the copy a GPU machine without network gets)
_TOKENIZERS = {"gemma3-270m": ["gemma3-270m"]}
_SMOLLM2_TOKENIZER = ["gpu/smollm2-tokenizer", "smollm2-135m-instruct"]


def tokenizer_dir(shape: str) -> Path:
    """A folder holding the tokenizer for ``shape``: the ``shared/gpu`` copy (`_common.shared`) or the
    materialised built-in in the model cache."""
    from core import catalog

    tried = []
    for name in _TOKENIZERS.get(shape, _SMOLLM2_TOKENIZER):
        p = shared(name) if "/" in name else catalog.cache_dir() / name
        if (p / "tokenizer.json").is_file():
            return p
        tried.append(str(p))
    raise SystemExit(f"no tokenizer for shape {shape!r}; looked in {', '.join(tried)}. Copy shared/gpu into the "
                     f"checkout, or materialise the built-in (`seal models fetch gemma3-270m` for gemma3)")


def random_model(shape: str, seed: int = 0) -> str:
    """A checkpoint folder of ``shape`` with random weights (``torch.manual_seed(seed)``) and its
    tokenizer, under bench/out/random_init (built once, reused by later runs and child processes)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if shape not in SHAPES:
        raise SystemExit(f"unknown shape {shape!r}; shapes: {', '.join(SHAPES)}")
    dest = REPO / "bench" / "out" / "random_init" / f"{shape}-seed{seed}"
    if (dest / "config.json").is_file():
        return str(dest)
    src = tokenizer_dir(shape)
    tok = AutoTokenizer.from_pretrained(src)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    dims = dict(SHAPES[shape])
    cfg = AutoConfig.for_model(dims.pop("model_type"), **dims, pad_token_id=pad, eos_token_id=tok.eos_token_id,
                               bos_token_id=tok.bos_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(dest)  # whole or absent: an interrupted build is redone
    return str(dest)
