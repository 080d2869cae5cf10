"""Loading a causal LM and its tokenizer, and how it runs on this machine: device, dtype, attention
kernel, the CPU's allocator, the machine record, vLLM's platform, chat or plain prompting. (What a
model name means and where its files are is `core.catalog`'s.)

Shared by the teacher and the student sides, hence in the base layer. Chat vs plain prompting is
decided from the model itself (does its tokenizer have a chat template?) with a config override,
never from a hard-coded list of names.
"""

from __future__ import annotations

import ctypes
import os
import sys

from core import catalog

_allocator_tuned = False


def tune_cpu_allocator() -> None:
    """Keep freed memory in the heap instead of returning it to the OS (glibc only; idempotent).

    Each training step allocates and frees tensors of tens of MB (logits: tokens x vocab in fp32).
    glibc serves those with fresh mmap()s and unmaps them on free, so every step pays page faults
    on ~100 MB of newly touched memory. Raising the mmap and trim thresholds keeps the memory for
    reuse: +30% training tokens/s on SmolLM2-135M here (the effect jemalloc/tcmalloc give).
    """
    global _allocator_tuned
    if _allocator_tuned or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): leave the allocator alone
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # mallopt parameter numbers from <malloc.h>
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, (1 << 31) - 1)
    _allocator_tuned = True


def trim_cpu_memory() -> None:
    """Hand the free memory inside the heap back to the OS (glibc ``malloc_trim``; else a no-op).

    The other half of `tune_cpu_allocator`: with trimming off, a long-lived process that sees many
    tensor shapes (a worker adapting on edit after edit) fragments its heap, and with gemma3's
    262k-token vocabulary (logits of hundreds of MB) the RSS of a worker grew past 11 GB within 30
    jobs. Trimming between adaptations, not between steps, bounds that and keeps the per-step gain.
    """
    if not _allocator_tuned:
        return
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _contiguous_input(module, args):
    return (args[0].contiguous(), *args[1:])


def resolve_device(setting: str = "auto", key: str = "device"):
    """The torch device of a device setting (`core.config.DEVICE`): 'auto' is the GPU
    when torch sees one (torch's current one), else the CPU; 'cpu', 'cuda' and 'cuda:N' are what they
    say. A GPU that is not there is a `ConfigError` naming ``key``, the config field, before any
    model loads."""
    import torch

    from core.config import DEVICE, ConfigError

    if not DEVICE.fullmatch(str(setting)):
        raise ConfigError(f"{key}={setting!r} is unknown; use 'auto', 'cpu', 'cuda' or 'cuda:N' (N: a GPU index)")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}={setting}: torch sees no CUDA GPU here; set {key}: cpu (or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}={setting}: torch sees {torch.cuda.device_count()} GPU(s) here, "
                              f"cuda:0..cuda:{torch.cuda.device_count() - 1}; set {key} to one of them (or auto)")
    return device


def default_attention(device) -> str | None:
    """The attention kernel when a config leaves it unset: 'eager' on the CPU (15% more training
    tokens/s than 'sdpa' for these short sequences on the 2-core dev machine), transformers' own
    choice (None) on a GPU."""
    return "eager" if device.type == "cpu" else None


def load_model(model: str, *, cache: str | None = None, trust_remote_code: bool = False, dtype=None,
               attn_implementation: str | None = None, device=None):
    """Return (model, tokenizer) in eval mode; weights in ``dtype`` (default fp32), on ``device`` (a
    torch device; None: `resolve_device` ('auto'), the GPU if torch sees one).

    The tokenizer pads on the left, for batched generation.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = catalog.resolve(model, catalog.cache_dir(cache))
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32,
                                              trust_remote_code=trust_remote_code, **kwargs)
    device = resolve_device() if device is None else device
    if device.type != "cpu":
        lm.to(device)
    lm.eval()
    # At the first generation step the LM head gets the last position sliced out of the prompt's
    # hidden states, (batch, 1, hidden) with a batch stride of the whole prompt. Once the head's
    # weight is frozen (PEFT freezes it), torch.matmul will not fold such a tensor into one matrix
    # and instead copies the weight once per row for a bmm: with gemma3's 262k-token vocabulary,
    # 1.7 GB copied per answer batch, 10x the answering time. A contiguous input takes the fast path.
    head = lm.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)
    if lm.device.type == "cpu":
        tune_cpu_allocator()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return lm, tok


def autocast_dtype(setting: str, key: str = "dtype", device=None):
    """torch dtype to autocast to (None = fp32). 'auto' = bf16 where ``device`` (a torch device; None:
    `resolve_device`'s 'auto') has fast bf16 (a GPU that supports it; a CPU with native bf16, see
    `fast_cpu_bf16`), else fp32.

    Shared by student training and teacher generation; ``key`` names the config field in errors.
    """
    import torch

    if setting == "fp32":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if setting != "auto":
        raise ValueError(f"{key} must be 'auto', 'bf16' or 'fp32', got {setting!r}")
    device = resolve_device() if device is None else device
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if fast_cpu_bf16() else None


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def fast_cpu_bf16() -> bool:
    """Does this CPU compute bf16 natively (AVX512-BF16 or AMX)? oneDNN also *accepts* bf16 on
    AVX512F alone (``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is true there), but emulates it:
    a bf16 matmul measured 2.9x slower than fp32 on such a CPU (2-core Xeon, gemma3's head shape),
    and the batched student ran several times slower. Where the flags are unknown (not Linux), torch's
    own check decides."""
    import torch

    flags = cpu_flags()
    if not flags:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return bool({"avx512_bf16", "amx_bf16"} & flags) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def machine() -> dict:
    """The kind of machine a figure was measured on: CPU model and the instruction sets that decide
    its speed and numerics (AVX2, AVX512F, AVX512-BF16, AMX), whether torch runs bf16 on it, and so
    what ``dtype: auto`` means here (bf16 or fp32), plus the GPU if there is one.

    Figures from two machines compare only when these agree: with ``dtype: auto`` an AVX2-only CPU
    computes in fp32, one whose oneDNN runs bf16 in bf16, and the numbers differ."""
    import platform

    import torch

    flags, name = cpu_flags(), platform.processor()
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):  # not Linux
        pass
    auto = autocast_dtype("auto")
    return {"cpu": name, "cores": os.cpu_count(), "avx2": "avx2" in flags,
            "avx512f": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "torch_cpu_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "dtype_auto": "bf16" if auto is not None else "fp32"}


def eos_ids(generation_config, tokenizer) -> list[int]:
    """Token ids that end a generation: the model's generation EOS (chat models list their end-of-turn
    token there, e.g. Gemma's <end_of_turn>; it may be one id or a list) and the tokenizer's EOS."""
    ids = generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


def uses_chat(tokenizer, override: bool | None, key: str = "student.chat") -> bool:
    """Prompt through the chat template? The override wins; else: does the tokenizer have one."""
    if override is not None:
        if override and not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{key}=true but this tokenizer has no chat template; set {key}: false")
        return override
    return bool(getattr(tokenizer, "chat_template", None))


def vllm_problem(has_vllm: bool, device_type: str | None, what: str) -> str | None:
    """Why ``what=vllm`` cannot run here (None: it can). ``device_type`` is vLLM's platform
    (``current_platform.device_type``: 'cuda', 'cpu', ...; '' when vLLM found none it can run on).
    ``what`` is the config field that chose vllm."""
    fix = f"or set {what}=transformers"
    install = ("on a machine with a CUDA GPU run `pip install -e '.[gpu]'`; on a CPU, vLLM's CPU build "
               "(`make vllm-env` builds .venv-vllm with it: run the command with .venv-vllm/bin/)")
    if not has_vllm:
        return f"{what}=vllm needs the vllm package, which is not installed: {install}, {fix}"
    if not device_type:
        return (f"{what}=vllm: vllm is installed but finds no platform it can run on (a GPU build of vllm "
                f"without a GPU, or vllm's CPU build beside a CUDA torch): {install}, {fix}")
    return None


def vllm_platform(what: str):
    """vLLM's platform object (``vllm.platforms.current_platform``), or a `ConfigError` that names the
    field ``what`` and how to fix it. Importing vllm is slow (seconds): only a vllm backend calls this."""
    try:
        from vllm.platforms import current_platform
    except ModuleNotFoundError as e:
        if e.name != "vllm":  # vllm is there but broken: its own error says more than ours would
            raise
        current_platform = None
    problem = vllm_problem(current_platform is not None, getattr(current_platform, "device_type", None), what)
    if problem:
        from core.config import ConfigError

        raise ConfigError(problem)
    return current_platform


CPU_KV_CACHE_GIB = 2.0
"""KV cache of an engine on vLLM's CPU platform when the config leaves ``kv_cache_gib`` unset: ample for
the built-ins (smollm2-135m: about 46 KB per token in fp32, so some 45,000 tokens)."""


def kv_cache_kwargs(kv_cache_gib: float | None, on_cpu: bool) -> dict:
    """The engine's KV-cache argument: the configured size, else `CPU_KV_CACHE_GIB` on the CPU platform,
    else nothing (a GPU engine sizes its cache from ``gpu_memory_utilization``)."""
    gib = CPU_KV_CACHE_GIB if kv_cache_gib is None and on_cpu else kv_cache_gib
    return {} if gib is None else {"kv_cache_memory_bytes": int(gib * (1 << 30))}
