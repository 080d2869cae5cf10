"""What answers for a `Student`: the `Answerer` interface, and its transformers implementation.

The student trains its adapters in torch either way; answering can run in the same process on the
same model (`TransformersAnswerer`, the CPU default) or through a vLLM engine that serves each
trained adapter as a runtime LoRA (`student.vllm_answer.VLLMAnswerer`, ``answer.backend: vllm``).
Both take rendered prompts and, for each row, the adapter slot it goes through (-1: the base model).
"""

from __future__ import annotations

from typing import Callable, ContextManager, Protocol

from student.config import AnswerSettings


class Answerer(Protocol):
    """Greedy answers of rendered prompts for a student, row n through adapter slot ``slots[n]``."""

    def run(self, prompts: list[str], slots: list[int], max_new_tokens: int, stop: str | None) -> list[str]:
        """``stop`` None: an answer is its first line, stripped; else the text before ``stop``."""

    def adapters_changed(self) -> None:
        """The student's slots were trained anew or dropped: forget anything saved from them."""

    def check_merge(self) -> None:
        """Raise ValueError if adapters cannot be merged into the base weights under this answerer."""


class _TailStop:
    """Stops a row once the text of its last few tokens holds a stop string.

    transformers' ``stop_strings`` builds a table over the whole vocabulary on every generate call
    (seconds for a 49k vocabulary, per call); decoding a short tail per row and step costs
    microseconds. A stop string spans at most ``tail`` tokens (it is a few characters)."""

    def __init__(self, tok, stops: list[str], tail: int = 4):
        self.tok, self.stops, self.tail = tok, stops, tail
        self.start: int | None = None

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        if self.start is None:  # the first call sees the prompt plus one new token
            self.start = input_ids.shape[1] - 1
        rows = input_ids[:, max(self.start, input_ids.shape[1] - self.tail):].tolist()
        texts = self.tok.batch_decode(rows, skip_special_tokens=True)
        return torch.tensor([any(x in t for x in self.stops) for t in texts], device=input_ids.device)


class TransformersAnswerer:
    """Answers with the student's own model: left-padded greedy ``generate`` calls, each row routed
    through its slot's adapter by the student's bank.

    ``settings`` is the student's ``answer`` node, read at every call (its ``batch_size``: rows per
    adapter in a generate call); ``add_special_tokens`` is
    ``not student.chat``; ``autocast()`` and ``route(slots)`` are the student's contexts;
    ``stop_ids()`` / ``eos_ids()`` its answer-ending and end-of-sequence token ids.
    """

    def __init__(self, model, tok, settings: AnswerSettings, *, add_special_tokens: bool,
                 autocast: Callable[[], ContextManager], route: Callable[[list[int]], ContextManager],
                 stop_ids: Callable[[], list[int]], eos_ids: Callable[[], list[int]]):
        self.model, self.tok, self.settings, self.add_special_tokens = model, tok, settings, add_special_tokens
        self.autocast, self.route, self.stop_ids, self.eos_ids = autocast, route, stop_ids, eos_ids
        self.device = model.device

    def run(self, prompts: list[str], slots: list[int], max_new_tokens: int, stop: str | None) -> list[str]:
        if stop is None:  # any newline token ends the row: no string matching (`Student.stop_ids`)
            outs = self._generate(prompts, slots, max_new_tokens, self.stop_ids(), None)
            return [t.split("\n", 1)[0].strip() for t in outs]
        return [t.split(stop, 1)[0] for t in self._generate(prompts, slots, max_new_tokens, self.eos_ids(), [stop])]

    def adapters_changed(self) -> None:
        """Nothing to forget: every call reads the bank's current weights."""

    def check_merge(self) -> None:
        """Merging is fine: the next call answers with the merged weights."""

    def _generate(self, prompts: list[str], slots: list[int], max_new_tokens: int, eos_ids: list[int],
                  stop_strings: list[str] | None) -> list[str]:
        """Left-padded greedy generate calls of at most ``answer.batch_size`` rows per adapter in the
        call (K adapters: batch_size x K rows), rows in the order given."""
        import torch

        bs = self.settings.batch_size * max(1, len(set(slots)))
        out = []
        for i in range(0, len(prompts), bs):
            enc = self.tok(prompts[i:i + bs], return_tensors="pt", padding=True,
                           add_special_tokens=self.add_special_tokens)
            enc = enc.to(self.device)
            extra = {}
            if stop_strings:  # one per batch: it remembers where the batch's prompts end
                from transformers import StoppingCriteriaList

                extra = {"stopping_criteria": StoppingCriteriaList([_TailStop(self.tok, stop_strings)])}
            # greedy generate keeps its rows in place, so one routing holds for the whole call
            with torch.inference_mode(), self.autocast(), self.route(slots[i:i + bs]):
                gen = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.tok.pad_token_id, eos_token_id=eos_ids, **extra)
            out += [self.tok.decode(row, skip_special_tokens=True) for row in gen[:, enc["input_ids"].shape[1]:]]
        return out
