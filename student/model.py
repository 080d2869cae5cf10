"""A loaded student: one frozen base model per process, K LoRA adapters trained and answered at once.

`Student` puts together three parts and holds no algorithm of its own: how it is prompted
(`student.prompting`), the fused loop that trains K adapters together (`student.lora_train`, which
says why and how), and what answers through them (`student.answerer`: in this process, or through
vLLM with ``answer.backend: vllm``). ``train_many``/``respond_many`` are the K-adapter calls;
``train``/``respond``/``answer``/``complete`` are the one-adapter case (slot 0).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path

from core.domains.spec import Decode, Query, TrainSpec
from core.models import (autocast_dtype, default_attention, eos_ids, load_model, resolve_device, trim_cpu_memory,
                         uses_chat)
from student import prompting
from student.answerer import Answerer, TransformersAnswerer
from student.config import StudentConfig
from student.lora_batch import to_device
from student.lora_train import LoraTrainer, TrainStats, padded


class Student:
    """One frozen base model and a bank of LoRA adapter slots.

    ``train_many(specs, seeds)`` trains slot k on ``specs[k]``; ``respond_many(queries, decode)``
    answers ``queries[k]`` with slot k (-1 = the base model); the adapters stay in effect until
    `discard`. ``train``/``respond``/``answer``/``complete`` are the one-adapter case (slot 0).
    """

    def __init__(self, cfg: StudentConfig, cache: str | None = None):
        import torch

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        device = resolve_device(cfg.device, "student.device")
        # The frozen base is stored in the autocast dtype: autocast does not cache casts of weights
        # that need no grad, so fp32 weights would be re-cast on every matmul. LoRA weights and the
        # optimizer state stay fp32.
        self.dtype = autocast_dtype(cfg.train.dtype, "student.train.dtype", device)
        attn = cfg.attn_implementation or default_attention(device)
        self.model, self.tok = load_model(cfg.model, cache=cache, trust_remote_code=cfg.trust_remote_code,
                                          dtype=self.dtype, attn_implementation=attn, device=device)
        self.model.requires_grad_(False)  # only the adapters train
        self.chat = uses_chat(self.tok, cfg.chat)
        self.device = self.model.device
        self.trainer = LoraTrainer(self.model, self.tok, self.chat, cfg, self._autocast)
        self._stop_ids: list[int] | None = None
        self.answerer: Answerer
        if cfg.answer.backend == "vllm":
            # training stays here; answers come from a vLLM engine that serves each trained adapter
            # as a runtime LoRA (exported as PEFT when first needed)
            from core import catalog
            from student.vllm_answer import VLLMAnswerer

            self.answerer = VLLMAnswerer.start(catalog.resolve(cfg.model, catalog.cache_dir(cache)), cfg.answer,
                                               lora_rank=cfg.lora.r, add_special_tokens=not self.chat,
                                               trust_remote_code=cfg.trust_remote_code, export=self.export_peft)
        else:
            self.answerer = TransformersAnswerer(self.model, self.tok, cfg.answer, add_special_tokens=not self.chat,
                                                 autocast=self._autocast, route=self._route,
                                                 stop_ids=self.stop_ids, eos_ids=self.eos_ids)

    # ----- prompting ---------------------------------------------------------------------------
    def prompt(self, question: str) -> str:
        """A question as the student is asked it (`student.prompting.question_prompt`)."""
        return prompting.question_prompt(self.tok, self.chat, self.cfg.answer, question)

    def raw_prompt(self, text: str) -> str:
        """A domain's whole prompt, as the model is prompted: one user turn for chat models."""
        return prompting.raw_prompt(self.tok, self.chat, text)

    def eos_ids(self) -> list[int]:
        """The model's end-of-sequence token ids (generation config and tokenizer)."""
        return eos_ids(self.model.generation_config, self.tok)

    def stop_ids(self) -> list[int]:
        """Token ids that end an answer: EOS, and every token whose text holds a newline
        (`student.prompting.stop_ids`). Computed once per student."""
        if self._stop_ids is None:
            self._stop_ids = prompting.stop_ids(self.tok, self.eos_ids())
        return self._stop_ids

    # ----- the contexts training and answering run under ---------------------------------------
    def _autocast(self):
        import torch

        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def _route(self, slots: list[int]):
        if self.trainer.bank is None:
            return nullcontext()  # no adapter was ever built: every row is the base model
        return self.trainer.bank.route(slots)

    def _slot(self) -> int:
        return 0 if self.trainer.trained else -1

    # ----- answering ---------------------------------------------------------------------------
    def answer(self, questions: list[str], max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers (slot 0's adapter, if trained), batched; each cut at its first newline (or
        EOS). Without the passage."""
        return self.answerer.run([self.prompt(q) for q in questions], [self._slot()] * len(questions),
                                 max_new_tokens or self.cfg.answer.max_new_tokens, None)

    def complete(self, texts: list[str], max_new_tokens: int, stop: str) -> list[str]:
        """Greedy continuations of raw prompts, each cut at its first ``stop`` string (or EOS)."""
        return self.answerer.run([self.raw_prompt(t) for t in texts], [self._slot()] * len(texts), max_new_tokens,
                                 stop)

    def respond(self, queries: list[Query], decode: Decode) -> list[str]:
        """Answers to a domain's queries (`core.domains.spec`), per its decode rule,
        with slot 0's adapter if one is trained (else the base model)."""
        return self.respond_many([queries], decode, [self._slot()])[0]

    def respond_many(self, queries: list[list[Query]], decode: Decode,
                     adapters: list[int] | None = None) -> list[list[str]]:
        """``queries[i]`` answered through slot ``adapters[i]`` (default: slot i; -1: the base model).

        The queries of every group that share a token budget go through the same generate calls,
        each row through its own adapter (greedy decoding keeps rows apart, so an answer is the one
        its adapter gives alone, within float tolerance); budgets run in increasing order."""
        adapters = list(range(len(queries))) if adapters is None else list(adapters)
        if len(adapters) != len(queries):
            raise ValueError(f"respond_many got {len(queries)} query groups but {len(adapters)} adapters")
        trained = self.trainer.trained
        if any(not -1 <= a < trained for a in adapters):
            raise ValueError(f"adapters {adapters} name slots without a trained adapter (trained: "
                             f"0..{trained - 1}; -1 = the base model); train_many first")
        stop = None if decode.style == "question" else ("\n\n" if decode.stop == "blank" else "\n")
        render = self.prompt if stop is None else self.raw_prompt
        out: list[list[str | None]] = [[None] * len(qs) for qs in queries]
        for budget in sorted({q.max_new_tokens for qs in queries for q in qs}):
            where = [(g, i) for g, qs in enumerate(queries) for i, q in enumerate(qs) if q.max_new_tokens == budget]
            got = self.answerer.run([render(queries[g][i].text) for g, i in where], [adapters[g] for g, _ in where],
                                    budget, stop)
            for (g, i), a in zip(where, got):
                out[g][i] = a
        return out

    # ----- adaptation --------------------------------------------------------------------------
    def train(self, spec: TrainSpec | list[str], fresh: bool = True, seed: int | None = None) -> TrainStats:
        """Train slot 0 on ``spec`` (or plain sequences): `train_many` with one adaptation. It stays
        in effect until `discard` (or `merge_adapter`). ``fresh=False`` trains the adapter already in
        place further (continual mode without merging)."""
        return self.train_many([spec], None if seed is None else [seed], fresh=fresh)[0]

    def train_many(self, specs: list[TrainSpec | list[str]], seeds: list[int] | None = None, *,
                   fresh: bool = True) -> list[TrainStats]:
        """Train adapter slot k on ``specs[k]`` (or plain sequences), all K at once, per ``cfg.train``
        and ``cfg.lora``; they stay in effect (for `respond_many`) until `discard`.

        ``seeds[k]`` (slot k's init and batch order) defaults to ``cfg.train.seed``; a job passes its
        own, so no job changes the config another one reads. ``fresh=False`` keeps training the
        adapters already in slots 0..K-1 (with a new optimizer state, as a new AdamW would), where
        there are K trained ones; otherwise each slot starts fresh.

        Each fused step trains the next batch of every adaptation still training: their batches
        stacked (right-padded to the widest), the loss the sum of each one's own mean over its own
        real tokens. An adaptation drops out after its last epoch or ``max_steps``; a spec with no
        training data trains 0 steps. Adapter dropout, if set, draws from the global RNG, so only
        with dropout 0 (the default) are K together exactly K alone."""
        specs = [s if isinstance(s, TrainSpec) else TrainSpec(sequences=tuple(s)) for s in specs]
        seeds = [self.cfg.train.seed] * len(specs) if seeds is None else list(seeds)
        stats = self.trainer.train_many(specs, seeds, fresh=fresh)
        self.answerer.adapters_changed()
        return stats

    def _encode(self, spec: TrainSpec, max_length: int):
        """`LoraTrainer.encode` (bench/inner_loop.py builds its reference batches with it)."""
        return self.trainer.encode(spec, max_length)

    def _batches(self, ids, labels, train, rng):
        """`LoraTrainer.batches` as right-padded (input_ids, attention_mask, labels) tensors on the
        student's device (bench/inner_loop.py builds its reference batches with it)."""
        for b in self.trainer.batches(ids, labels, train, rng):
            yield tuple(to_device(padded(b.ids, b.labels, self.tok.pad_token_id), self.device))

    def export_peft(self, slot: int, folder: str | Path) -> None:
        """Write slot's adapter as a PEFT adapter folder, loadable by ``PeftModel.from_pretrained``
        and by vLLM (`LoraTrainer.export_peft`)."""
        self.trainer.export_peft(slot, folder)

    def merge_adapter(self) -> None:
        """Fold slot 0's trained adapter into the base weights for good (continual mode, as the paper
        did): later adaptations start from the adapted model, with a fresh adapter."""
        if not self.trainer.trained:
            return
        self.answerer.check_merge()
        self.trainer.merge(0)

    def discard(self) -> None:
        """Drop the trained adapters: back to the exact base model (no row goes through a slot)."""
        self.trainer.trained = 0
        self.answerer.adapters_changed()
        trim_cpu_memory()

    @contextmanager
    def adapted(self, spec: TrainSpec | list[str], seed: int | None = None):
        """``with student.adapted(spec) as stats: student.answer(...)``; discarded on exit."""
        try:
            yield self.train(spec, seed=seed)
        finally:
            self.discard()
