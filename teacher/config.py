"""Configuration of the teacher: which model writes self-edits, with which prompt, how it samples,
and how ReST^EM trains it on the rewarded edits.

Plain dataclasses (no torch), mirrored by the ``teacher:`` node of the YAML files in ``configs/``.
Every field is documented here; this file is the manual for that node. Each dataclass's ``check(key)``
refuses out-of-range values before any work (see `core.config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from core.config import (Choice, ConfigError, Dtype, check_choice, check_device, check_dropout, check_fraction,
                         check_min, check_nonempty, check_positive)


class Backend(Choice):
    """Where edits are generated."""

    transformers = "transformers"
    vllm = "vllm"


class Save(Choice):
    """How a ReST^EM version is saved."""

    merged = "merged"
    adapter = "adapter"


@dataclass
class GenerationSettings:
    """Sampling of self-edits. Recorded with every edit."""

    backend: Backend = Backend.transformers
    """'transformers' (CPU default; batched sampling in one process) or 'vllm' (a ``vllm.LLM`` engine in
    this process; on a CUDA GPU with ``pip install -e '.[gpu]'``, or on the CPU with vLLM's CPU build,
    ``make vllm-env``)."""
    temperature: float = 1.0
    """Sampling temperature for training edits, > 0 (held-out edits are greedy unless ``eval.sampled``).
    0 is refused rather than read as greedy: training edits are sampled so that k of them differ, and
    greedy decoding is already what held-out edits get."""
    top_p: float = 0.95
    """Nucleus sampling mass, in (0, 1]."""
    max_new_tokens: int = 192
    """Tokens per edit (1 or more); an edit cut here is kept and marked ``finished: false``."""
    constrain: bool = False
    """Sample only edits in the domain's finite edit format (ARC's JSON choices; the knowledge domain
    has none): each token is drawn from the teacher's distribution renormalised over the tokens that
    keep the text on the way to a valid edit. For teachers too small to write the format unaided.
    transformers backend only."""
    batch_size: int = 32
    """Sequences per generate() call (1 or more): prompts x samples are flattened and batched together."""
    seed: int = 0
    """Base seed; each generate call is seeded from it, the round and the batch, and records its seed."""
    dtype: Dtype = Dtype.auto
    """'auto' (bf16 where the hardware has fast bf16; with vllm: vLLM's own choice from the checkpoint),
    'bf16' or 'fp32'."""
    gpu_memory_utilization: float = 0.85
    """vllm only: fraction of the whole GPU's memory the engine takes for weights and KV cache, in (0, 1].
    Lower it when student workers share the GPU (their models and engines need the rest)."""
    max_model_len: Optional[int] = None
    """vllm only: longest prompt + edit, in tokens, the engine must hold; None = the model's own limit.
    Set it when the KV cache for the model's full context does not fit in ``gpu_memory_utilization``."""
    enforce_eager: bool = False
    """vllm only: skip CUDA graph capture and torch.compile (starts faster, decodes slower). The driver
    builds one engine per teacher version and step, so on small models the capture can cost more than
    it saves."""
    kv_cache_gib: Optional[float] = None
    """vllm only: the engine's KV cache in GiB (vLLM's ``kv_cache_memory_bytes``), > 0. None = on a GPU,
    what ``gpu_memory_utilization`` leaves after the weights; on vLLM's CPU platform, where
    ``gpu_memory_utilization`` would reserve that fraction of the machine's whole RAM, 2 GiB."""

    def check(self, key: str = "teacher.generation") -> None:
        check_choice(self, key, "backend", Backend)
        check_choice(self, key, "dtype", Dtype)
        check_positive(self, key, "temperature", hint=" (held-out edits are greedy already; for near-greedy "
                                                      "training edits use a small value such as 0.1)")
        check_fraction(self, key, "top_p", "gpu_memory_utilization")
        check_min(self, key, 1, "max_new_tokens", "batch_size", "max_model_len")
        check_positive(self, key, "kv_cache_gib")
        if self.constrain and self.backend != Backend.transformers:
            raise ConfigError(f"{key}.constrain=true is implemented for the transformers backend only; "
                              f"set {key}.backend=transformers or constrain=false")
        if self.backend == Backend.vllm:
            from core.models import vllm_platform

            vllm_platform(f"{key}.backend")


@dataclass
class SFTSettings:
    """The ReST^EM update: TRL SFTTrainer on rewarded (prompt, edit) pairs, completion-only loss."""

    epochs: int = 2
    """Passes over the rewarded pairs (1 or more)."""
    learning_rate: float = 3e-4
    """Peak learning rate (linear decay), > 0."""
    batch_size: int = 4
    """Pairs per optimizer step (per_device_train_batch_size)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""
    max_length: int = 1024
    """Prompt + edit tokens per example; longer ones are truncated."""
    lora_r: int = 16
    """LoRA rank of the teacher update."""
    lora_alpha: int = 32
    """LoRA scaling numerator (update x alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Linear layers that get an adapter."""
    save: Save = Save.merged
    """'merged': each version is a full checkpoint (adapter merged into the weights); 'adapter': only the
    adapter is saved and a version is loaded by applying its chain of adapters to the base model."""
    keep_last: int = 2
    """Retention: keep the last K merged versions (K >= 1: the newest is the teacher) plus the best on
    held-out accuracy; older ones are deleted (a merged version is a full model). Adapter-only versions
    are always kept (each one is needed to rebuild the next)."""
    seed: int = 0
    """Seed of the SFT run (data order, adapter init); recorded in the version manifest."""
    drop_unfinished: bool = False
    """true: rewarded edits cut at ``teacher.generation.max_new_tokens`` (``finished: false``) are left
    out of the SFT set; trained on without their end, they teach the teacher to run to the limit.
    The manifest counts them (``dropped_unfinished``); a round whose rewarded edits are all cut
    trains no version."""
    restart: bool = True
    """true: every round's version is trained from v0 (the configured model) on the union of the
    winners of every round so far, as ReST^EM and STaR do: a version never drifts on its own
    samples, and each round's SFT set only grows. false: each version continues from the current
    one, on its own round's winners only."""

    def check(self, key: str = "teacher.sft") -> None:
        check_choice(self, key, "save", Save)
        check_min(self, key, 1, "epochs", "batch_size", "gradient_accumulation_steps", "max_length", "lora_r",
                  "keep_last")
        check_positive(self, key, "learning_rate", "lora_alpha")
        check_dropout(self, key, "lora_dropout")
        check_nonempty(self, key, "target_modules")


@dataclass
class TeacherConfig:
    """The edit-writing model."""

    model: str = "smollm2-135m-instruct"
    """Version 0: a built-in name (see `seal models list`), a shipped teacher (`seal-teacher-smollm2`, trained
    by this project), a local checkpoint folder or a hub id."""
    chat: Optional[bool] = None
    """Prompt through the chat template? None = decide from the tokenizer (has a chat template)."""
    trust_remote_code: bool = False
    """Allow model code from the checkpoint to run. Off unless you trust the source."""
    threads: int = 0
    """torch intra-op threads for generation and SFT in the driver (0 = torch's default)."""
    device: str = "auto"
    """Where the teacher generates (transformers backend), scores log-likelihoods and runs its SFT
    update: 'auto' (the GPU when torch sees one, else the CPU), 'cpu', 'cuda' (torch's current GPU) or
    'cuda:0'. ``generation.dtype: auto``, the attention kernel and SFT's bf16 follow it. A vLLM engine
    (``generation.backend: vllm``) places itself. No other GPU index: HF's Trainer runs the SFT update on
    cuda:0 whatever it is told; pick the GPU with CUDA_VISIBLE_DEVICES instead."""
    max_prompt_tokens: int = 2048
    """Longest teacher prompt (the template with a context filled in), in tokens of the teacher's
    tokenizer. Every context's prompt is measured before any work (the tokenizer alone is loaded), and
    a longer one is refused: a 2 MB passage would otherwise become a 900k-token prompt that runs for
    hours. Keep prompt + ``generation.max_new_tokens`` within the model's context length."""
    prompt: str = "implications"
    """Self-edit prompt template: 'implications', 'implications-long', 'implications-very-long',
    'rewrite', 'self-qa', 'atomic-facts', or a name from ``templates``. The canonical prompt: held-out
    edits are written under it, and the ReST^EM update trains every winning edit under it."""
    explore: list[str] = field(default_factory=list)
    """Templates the k training edits of a context are sampled under, in turn (sample i under
    ``explore[i % len(explore)]``); each edit records its template. ReST^EM re-weights what the
    sampler already writes and invents no new form, so exploring other prompts lets a better form
    win; the update pairs each winner with ``prompt``'s rendering of its context, which distils the
    winners' forms into the one canonical prompt. Empty: every edit under ``prompt``."""
    templates: dict[str, str] = field(default_factory=dict)
    """Extra templates, name -> text with {title} and {context} placeholders (and no other braces;
    write {{ and }} for literal ones)."""
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    sft: SFTSettings = field(default_factory=SFTSettings)

    def check(self, key: str = "teacher") -> None:
        """Every value of the node; the model itself is checked by `core.catalog.check_model`
        (it needs the model cache of the command's config)."""
        from teacher.prompts import template_text

        check_min(self, key, 0, "threads")
        check_device(self, key)
        if self.device.startswith("cuda:") and self.device != "cuda:0":
            raise ConfigError(f"{key}.device={self.device}: the SFT update runs on cuda:0 (HF's Trainer picks it); "
                              f"choose the GPU with CUDA_VISIBLE_DEVICES={self.device[5:]} and set {key}.device: cuda")
        check_min(self, key, 1, "max_prompt_tokens")
        for name, value in (("prompt", self.prompt), *((f"explore.{i}", t) for i, t in enumerate(self.explore))):
            try:
                template_text(value, self.templates)
            except ValueError as e:
                raise ConfigError(f"{key}.{name}={value}: {e}") from None
        if len(set(self.explore)) != len(self.explore):
            raise ConfigError(f"{key}.explore={list(self.explore)} names a template twice; list each once")
        self.generation.check(f"{key}.generation")
        self.sft.check(f"{key}.sft")
