"""Configuration of one student: which model, how it is adapted, how it answers, how it is graded.

Plain dataclasses (no torch), mirrored by the ``student:`` node of the YAML files in ``configs/``.
Every field is documented here; this file is the manual for that node. Each dataclass's ``check(key)``
refuses out-of-range values before any work (see `core.config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from core.config import (Choice, ConfigError, Dtype, check_choice, check_device, check_dropout, check_fraction,
                         check_min, check_nonempty, check_positive)
from core.domains.arc import ArcSettings


class Grader(Choice):
    """Score per question (`student.graders.GRADERS`, plus the LLM judge)."""

    f1 = "f1"
    exact = "exact"
    contains = "contains"
    judge = "judge"


class AnswerBackend(Choice):
    """What answers the questions after training."""

    transformers = "transformers"
    vllm = "vllm"


class VLLMDtype(Choice):
    """vLLM's own dtype names."""

    auto = "auto"
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


@dataclass
class LoraSettings:
    """LoRA adapter trained for each adaptation (PEFT's ``LoraConfig`` fields; trained by
    `student.lora_batch`, saved in PEFT's format)."""

    r: int = 16
    """Rank of the update matrices."""
    alpha: int = 32
    """Scaling numerator: the update is multiplied by alpha / r."""
    dropout: float = 0.0
    """Dropout on the adapter input during training."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Names of the linear layers that get an adapter (both built-in models use these names). Not the
    LM head: the loss takes the frozen head's gradient in its forward (`student.head_loss`)."""

    def check(self, key: str = "student.lora") -> None:
        check_min(self, key, 1, "r")
        check_positive(self, key, "alpha")
        check_dropout(self, key, "dropout")
        check_nonempty(self, key, "target_modules")
        if "lm_head" in self.target_modules:
            raise ConfigError(f"{key}.target_modules={list(self.target_modules)} names lm_head; the inner loop keeps "
                              f"the LM head frozen (student.head_loss): remove it")


@dataclass
class TrainSettings:
    """The inner-loop SFT run on one self-edit."""

    epochs: int = 3
    """Passes over the edit's training sequences (1 or more)."""
    learning_rate: Optional[float] = None
    """AdamW learning rate (constant; the runs are a few dozen steps), > 0. None: the student's own
    default, the rate under which its gain ranks edits by their content on passages it was not
    tuned on (bench/validity.py): 1e-3 for smollm2-135m-instruct, 3e-4 for gemma3-270m, 1e-3 for
    any other model. Every adaptation records the rate it used."""
    batch_size: int = 4
    """Sequences per optimizer step; batches are grouped by length and padded only to their longest."""
    max_length: int = 512
    """Tokens per training sequence; longer ones are truncated and the count is recorded."""
    max_sequences: int = 64
    """Cap on training sequences per edit; the excess is dropped and the count is recorded."""
    max_steps: int = 0
    """Per-edit step budget: stop after this many optimizer steps (0 = no budget, run all epochs)."""
    pass_tokens: int = 2048
    """Padded tokens per forward/backward pass when adaptations train together: a fused step sorts
    every adaptation's rows by length and runs them in passes of about this many tokens, then takes
    one optimizer step. It changes speed and memory, not results (each adaptation's loss and
    gradient are its own batch's)."""
    passage_copies: int = 1
    """Copies of the passage itself added to an edit's training sequences: 1 as the reference
    implementation does, 0 for none, more to weight the passage against a long edit. Training on
    the passage alone (condition 'passage', or an empty edit) always uses it once."""
    seed: int = 0
    """Seeds adapter initialisation and batch order; recorded with every result."""
    dtype: Dtype = Dtype.auto
    """Compute dtype for training and answering: 'auto' (bf16 where the CPU/GPU has fast bf16), 'bf16' or
    'fp32'. With bf16 the frozen base weights are held in bf16 and run under autocast; LoRA weights
    and optimizer state stay fp32. Read when the model is loaded."""
    weight_decay: float = 0.0
    """AdamW weight decay on the adapter weights."""

    def check(self, key: str = "student.train") -> None:
        check_choice(self, key, "dtype", Dtype)
        check_min(self, key, 1, "epochs", "batch_size", "max_length", "max_sequences", "pass_tokens")
        check_min(self, key, 0, "max_steps", "weight_decay", "passage_copies")
        check_positive(self, key, "learning_rate")


def learning_rate_of(cfg: "StudentConfig") -> float:
    """The inner loop's learning rate: ``train.learning_rate``, or the student's own default."""
    from core.catalog import BUILTINS, DEFAULT_LEARNING_RATE

    if cfg.train.learning_rate is not None:
        return cfg.train.learning_rate
    return BUILTINS[cfg.model].learning_rate if cfg.model in BUILTINS else DEFAULT_LEARNING_RATE


@dataclass
class Example:
    """One few-shot question and its answer, shown before the real question."""

    question: str = ""
    """The question, as the student would see one."""
    answer: str = ""
    """Its answer, in the format wanted (a short span)."""


def _default_examples() -> list[Example]:
    # General-knowledge shots that only set the answer format (a short span, not a sentence).
    return [Example("What is the capital of France?", "Paris"),
            Example("In what year did the First World War end?", "1918"),
            Example("Who wrote the play Hamlet?", "William Shakespeare")]


@dataclass
class VLLMSettings:
    """The vLLM engine that answers when ``answer.backend: vllm``: one ``vllm.LLM`` per worker holding the
    base model, with each trained adapter served as a runtime LoRA (see `student.vllm_answer`)."""

    gpu_memory_utilization: float = 0.3
    """Fraction of the whole GPU's memory the engine takes for its copy of the base weights and its KV
    cache, in (0, 1]. Low by default: the worker's own copy of the model trains on the same GPU."""
    max_loras: int = 1
    """Adapters the engine holds on the GPU at once (a worker answers with one adapter at a time)."""
    max_lora_rank: Optional[int] = None
    """Largest adapter rank the engine accepts; None = ``student.lora.r``. vLLM accepts only some
    ranks (8, 16, 32, 64, ...); set the next one up for another ``lora.r``."""
    max_model_len: Optional[int] = 2048
    """Longest prompt + answer in tokens (few-shot prompt and one question: far below 2048). Bounding
    it keeps the KV cache small; None = the model's own limit."""
    dtype: VLLMDtype = VLLMDtype.auto
    """Engine dtype in vLLM's names: 'auto' (vLLM's choice from the checkpoint), 'bfloat16', 'float16'
    or 'float32'."""
    enforce_eager: bool = False
    """Skip CUDA graph capture and torch.compile (starts faster, decodes slower)."""
    kv_cache_gib: Optional[float] = None
    """The engine's KV cache in GiB (vLLM's ``kv_cache_memory_bytes``), > 0. None = on a GPU, what
    ``gpu_memory_utilization`` leaves after the weights; on vLLM's CPU platform, where
    ``gpu_memory_utilization`` would reserve that fraction of the machine's whole RAM, 2 GiB."""
    max_cpu_loras: Optional[int] = None
    """Adapters vLLM keeps loaded in host memory (its LRU cache behind ``max_loras``), >= max_loras;
    None = ``keep_adapters``, so the engine holds no more adapters than there are folders on disk."""
    keep_adapters: int = 4
    """Saved adapter folders kept on disk; beyond this the least recently used is deleted."""
    adapter_dir: Optional[str] = None
    """Where saved adapters go: each worker makes its own subfolder here (removed when it closes its
    engine); None = the system's temporary folder."""

    def check(self, key: str = "student.answer.vllm") -> None:
        check_choice(self, key, "dtype", VLLMDtype)
        check_fraction(self, key, "gpu_memory_utilization")
        check_min(self, key, 1, "max_loras", "max_lora_rank", "max_model_len", "keep_adapters", "max_cpu_loras")
        check_positive(self, key, "kv_cache_gib")
        if self.max_loras > self.cpu_loras:
            raise ConfigError(f"{key}.max_loras={self.max_loras} is above max_cpu_loras={self.cpu_loras} "
                              f"(None means keep_adapters), and vLLM needs max_cpu_loras >= max_loras: raise "
                              f"{key}.max_cpu_loras (or keep_adapters), or lower max_loras")

    @property
    def cpu_loras(self) -> int:
        """``max_cpu_loras`` as the engine gets it."""
        return self.max_cpu_loras or self.keep_adapters


@dataclass
class AnswerSettings:
    """How the student answers a question about the passage, without the passage in the prompt."""

    max_new_tokens: int = 16
    """Greedy tokens per answer; the answer is cut at the first newline or EOS. Short on purpose:
    containment grading rewards long answers."""
    batch_size: int = 16
    """Questions answered per generate() call (left-padded)."""
    instruction: str = "Answer the question with a short phrase, not a sentence."
    """Instruction placed before each question (chat models: in the user turn)."""
    examples: list[Example] = field(default_factory=_default_examples)
    """Few-shot question/answer pairs shown before the question (chat models: as earlier turns).
    They set the answer format; they carry no knowledge of the contexts."""
    backend: AnswerBackend = AnswerBackend.transformers
    """'transformers' (answer with the adapted model in this process; CPU default) or 'vllm' (export
    the trained adapter in PEFT's format and answer through a vLLM engine with it as a runtime LoRA;
    on a CUDA GPU with ``pip install -e '.[gpu]'``, or on the CPU with vLLM's CPU build, ``make
    vllm-env``). Training is this process's either way."""
    vllm: VLLMSettings = field(default_factory=VLLMSettings)

    def check(self, key: str = "student.answer") -> None:
        check_choice(self, key, "backend", AnswerBackend)
        check_min(self, key, 1, "max_new_tokens", "batch_size")
        self.vllm.check(f"{key}.vllm")
        if self.backend == AnswerBackend.vllm:
            from core.models import vllm_platform

            vllm_platform(f"{key}.backend")


@dataclass
class JudgeConfig:
    """LLM-judge grader: an OpenAI-compatible chat endpoint (used only when ``grader: judge``)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """Endpoint root; ``/chat/completions`` is appended."""
    model: str = "gpt-4.1"
    """Model name sent to the endpoint."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (empty or unset: no Authorization header)."""
    timeout_s: float = 30.0
    """Seconds per HTTP request."""
    max_retries: int = 3
    """Retries after a failed request (HTTP 429/5xx, timeouts, unreadable verdicts), with backoff."""
    backoff_s: float = 1.0
    """First retry delay in seconds; doubles each retry."""
    cache_path: Optional[str] = None
    """JSON file of verdicts keyed by (question, gold, answer); None = the run folder's judge_cache.json."""

    def check(self, key: str = "student.judge") -> None:
        check_positive(self, key, "timeout_s")
        check_min(self, key, 0, "max_retries", "backoff_s")


@dataclass
class StudentConfig:
    """One student model and its inner loop."""

    model: str = "smollm2-135m-instruct"
    """Built-in name (see `seal models list`), a local checkpoint folder, or a hub id."""
    chat: Optional[bool] = None
    """Prompt through the chat template? None = decide from the tokenizer (has a chat template)."""
    trust_remote_code: bool = False
    """Allow model code from the checkpoint to run. Off unless you trust the source."""
    threads: int = 0
    """torch intra-op threads (0 = torch's default: all cores)."""
    device: str = "auto"
    """Where the student trains, answers and scores log-likelihoods: 'auto' (the GPU when torch sees one,
    else the CPU), 'cpu', 'cuda' (torch's current GPU) or 'cuda:N'. ``train.dtype: auto`` and the
    attention kernel follow it. A vLLM engine (``answer.backend: vllm``) places itself."""
    attn_implementation: Optional[str] = None
    """transformers attention kernel. None = `core.models.default_attention` for ``device``:
    'eager' on the CPU, transformers' default on a GPU."""
    grader: Grader = Grader.f1
    """Score per question: 'f1' (SQuAD token F1), 'exact' (normalized exact match), 'contains'
    (gold span contained in the answer) or 'judge' (LLM judge; see ``judge``)."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    answer: AnswerSettings = field(default_factory=AnswerSettings)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    arc: ArcSettings = field(default_factory=ArcSettings)
    """How ARC edits are run (domain 'arc' only): edit limits, the default_ttt recipe, prediction views."""

    def check(self, key: str = "student") -> None:
        """Every value of the node; the model itself is checked by `core.catalog.check_model`
        (it needs the model cache of the command's config)."""
        check_min(self, key, 0, "threads")
        check_device(self, key)
        check_choice(self, key, "grader", Grader)
        self.lora.check(f"{key}.lora")
        self.train.check(f"{key}.train")
        self.answer.check(f"{key}.answer")
        self.judge.check(f"{key}.judge")


def check_students(students: list[StudentConfig], key: str) -> None:
    """A command's list of students (``key``: its dotted key, 'students' or 'train.students'): one or
    more distinct models, and each student's own `check`."""
    names = [s.model for s in students]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"{key}={names}: give one or more distinct student models")
    for i, s in enumerate(students):
        s.check(f"{key}.{i}")
