"""What a teacher generation backend is: the `Backend` protocol, the `Generation` it returns, the
seed hash, and the request checks every backend runs.

Three classes implement it: `teacher.transformers_backend.TransformersBackend` (this process, the CPU default),
`teacher.vllm_backend.VLLMBackend` (a ``vllm.LLM`` engine) and the driver's
``orchestration.ray_launch.RayTeacherBackend`` (either of them in a Ray actor). The driver
(through `teacher.writer.write_edits`) sees only this interface.

Why a module of its own: both in-process backends need `Generation` and `batch_seed`, and
`teacher.transformers_backend.make_backend` picks between them; with the shared parts in that
module, it and `teacher.vllm_backend` imported each other. This one imports only `teacher.config`,
so every backend depends on it and none on another.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

from teacher.config import GenerationSettings


@dataclass(frozen=True)
class Generation:
    text: str  # decoded, special tokens skipped, stripped
    n_tokens: int  # generated tokens up to and including the end (EOS / end-of-turn); pads after it excluded
    finished: bool  # ended by EOS / end-of-turn rather than by max_new_tokens


class Backend(Protocol):
    """A loaded teacher version that samples self-edits from rendered prompts."""

    tokenizer: Any
    """The teacher's transformers tokenizer: callers render prompts with it (`teacher.prompts.render`)."""
    chat: bool
    """Are prompts rendered with the tokenizer's chat template (``teacher.chat`` resolved for this model)."""

    def generate(self, prompts: list[str], n: int, *, greedy: bool = False, seed: int = 0,
                 choices: list[str] | None = None) -> list[list[Generation]]:
        """``n`` edits for each rendered prompt: one list of n Generations per prompt, in prompt order.
        ``greedy`` needs n=1; the same (prompts, n, seed) gives the same edits on the same machine.
        With ``choices``, every edit is one of those texts (a backend that cannot constrain refuses)."""
        ...

    def close(self) -> None:
        """Free the model (or engine, or actor): the driver loads the next teacher version next."""
        ...


def batch_seed(seed: int, index: int | str) -> int:
    """torch seed of batch ``index``: a hash, so (seed, index) pairs never collide as seed + index would.
    ``index`` may be any value with a stable ``str`` (the driver hashes edit ids)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little") >> 1


def check_sampling(gen: GenerationSettings, n: int, greedy: bool) -> None:
    """Refuse a request no backend can serve, before any work: n >= 1; greedy only with n=1 (its
    samples would be identical); for sampling, temperature > 0 and top_p in (0, 1]."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if greedy and n != 1:
        raise ValueError(f"greedy decoding gives {n} identical samples; ask for n=1")
    if greedy:
        return
    if gen.temperature <= 0:
        raise ValueError(f"teacher.generation.temperature must be > 0 for sampling, got {gen.temperature}; "
                         f"greedy edits are asked for with greedy=True")
    if not 0 < gen.top_p <= 1:
        raise ValueError(f"teacher.generation.top_p must be in (0, 1], got {gen.top_p}")
