"""A loaded student: one frozen base model per process, K LoRA adapters trained and answered at once.

A round is hundreds of independent adaptations of the same frozen student, and one alone (batch 4,
~200 real tokens a step) leaves the hardware idle. So the student trains K adapters together
(`train_many`): every fused step takes the next batch of each adaptation still training, runs the
base's matmuls once over all their rows, each row through its own adapter (`student.lora_batch`),
and sums the adaptations' own mean losses, which gives each adapter exactly its own gradient (their
weights are disjoint). Each adaptation keeps its whole recipe: its seeded init, its AdamW state,
learning rate, epochs, batches, batch order and step budget, so K trained together equal the same
K trained one at a time within float tolerance (tests/student/test_batched.py). `train` is K = 1.
Answering (`respond_many`) batches every adaptation's queries the same way.

Departures from the reference implementation and from plain HF training, on purpose: batches are
padded only to their longest sequence and the loss counts real tokens only (the reference pads to
2048 and trains on the pads); the loss is computed from the decoder's hidden states at the labelled
positions only, head + cross-entropy in checkpointed chunks of tokens, so the logits of a step
(tokens x vocabulary: gigabytes for gemma3's 262k vocabulary at K = 16) never exist all at once.

Shapes: input_ids / attention_mask / labels are (rows, longest sequence among the rows).
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from orchestration.core.domains.spec import Decode, Query, TrainSpec
from orchestration.core.models import autocast_dtype, eos_ids, load_model, trim_cpu_memory, uses_chat
from student.config import StudentConfig, TrainSettings, learning_rate_of


@dataclass(frozen=True)
class TrainStats:
    steps: int
    sequences: int
    real_tokens: int  # non-pad tokens trained on, summed over epochs
    truncated: int  # sequences cut to max_length
    too_long: int  # (prompt, target) pairs longer than max_length, left out (a cut target teaches a wrong answer)
    first_loss: float
    final_loss: float  # mean loss of the last epoch
    train_s: float  # wall seconds from the start of training to this adaptation's last step
    seed: int
    learning_rate: float  # the rate it trained at (the spec's, the config's, or the student's default)


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


@dataclass
class _Run:
    """One adaptation inside a fused training loop: its slot, recipe, data and progress."""

    slot: int
    seed: int
    lr: float
    sequences: int
    truncated: int
    too_long: int
    batches: Iterator  # (epoch, (input_ids, attention_mask, labels)), in this adaptation's own order
    next: tuple | None = None  # the batch its next step trains on; None once it is done
    steps: int = 0
    real: int = 0
    first: float = float("nan")
    epoch: int = -1
    epoch_losses: list[float] = field(default_factory=list)
    train_s: float = 0.0

    def stats(self) -> TrainStats:
        final = sum(self.epoch_losses) / max(1, len(self.epoch_losses))
        return TrainStats(self.steps, self.sequences, self.real, self.truncated, self.too_long, self.first, final,
                          self.train_s, self.seed, self.lr)


def token_losses(model, hidden, targets, chunk_logits: int = 1 << 26):
    """Cross-entropy of each token, (tokens,) fp32, from decoder hidden states (tokens, hidden) and
    next-token targets (tokens,), as the model's own forward computes logits (its head, then its
    ``final_logit_softcapping`` if it has one, as gemma's does).

    The head and loss run in chunks of about ``chunk_logits`` logits (64M: 256 MB in fp32), each under
    ``torch.utils.checkpoint`` when there is more than one, so a step holds one chunk's logits at a time and backward recomputes
    them instead of storing them (gemma3: 262k logits a token, 4 GB in fp32 for 16 adaptations x 4
    rows x 60 tokens; the recompute costs one more head forward per step)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)

    def piece(h, y):
        logits = head(h)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return F.cross_entropy(logits.float(), y, reduction="none")

    chunk = max(1, chunk_logits // head.weight.shape[0])
    # one chunk is held anyway: checkpointing it would only add a head forward (gemma3 at K = 1:
    # batched 0.92x the PEFT loop's tokens/s with it)
    grad = torch.is_grad_enabled() and hidden.requires_grad and len(targets) > chunk
    parts = [checkpoint(piece, hidden[i:i + chunk], targets[i:i + chunk], use_reentrant=False) if grad
             else piece(hidden[i:i + chunk], targets[i:i + chunk]) for i in range(0, len(targets), chunk)]
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


PASS_OVERHEAD = 64
"""A pass's fixed cost in padded tokens, for cutting passes: the frozen smollm2-135m base, fp32, on
the 2-core AVX512F (no bf16) dev CPU, ran forward + backward at 264 tokens/s for one 64-token row,
378 for four and 436 for 32 (a one-off check; bench/inner_loop.py's ``base_shape_scan`` measures
the same), i.e. ~40-60 tokens' worth of time per pass."""


def _passes(batches, pass_tokens: int) -> list[list[tuple[int, int, int]]]:
    """The rows of a fused step's batches (each (input_ids, attention_mask, labels), right-padded)
    cut into passes: (real length, batch, row), sorted longest first (ties in batch and row
    order), then split into runs of at most ``pass_tokens`` padded tokens (rows x the run's
    longest; a single longer row is a pass of its own) that minimise the padded tokens plus
    `PASS_OVERHEAD` per pass (dynamic programming over the sorted rows). Within a pass, rows come
    batch by batch, so full batches keep the bank's copy-free layout."""
    rows = sorted(((n, g, j) for g, b in enumerate(batches) for j, n in enumerate(b[1].sum(1).tolist())),
                  key=lambda x: (-x[0], x[1], x[2]))
    best, cut = [0.0] + [float("inf")] * len(rows), [0] * (len(rows) + 1)
    for j in range(1, len(rows) + 1):  # best[j]: the cheapest cut of rows[:j]; cut[j]: its last pass's start
        for i in range(j - 1, -1, -1):
            size = (j - i) * rows[i][0]
            if size > pass_tokens and i < j - 1:
                break
            if best[i] + size + PASS_OVERHEAD < best[j]:
                best[j], cut[j] = best[i] + size + PASS_OVERHEAD, i
    out, j = [], len(rows)
    while j:
        out.append(sorted(rows[cut[j]:j], key=lambda x: (x[1], x[2])))
        j = cut[j]
    return out[::-1]


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
        # The frozen base is stored in the autocast dtype: autocast does not cache casts of weights
        # that need no grad, so fp32 weights would be re-cast on every matmul. LoRA weights and the
        # optimizer state stay fp32.
        self.dtype = autocast_dtype(cfg.train.dtype, "student.train.dtype")
        attn = cfg.attn_implementation or ("eager" if not torch.cuda.is_available() else None)
        self.model, self.tok = load_model(cfg.model, cache=cache, trust_remote_code=cfg.trust_remote_code,
                                          dtype=self.dtype, attn_implementation=attn)
        self.model.requires_grad_(False)  # only the adapters train
        self.chat = uses_chat(self.tok, cfg.chat)
        self.device = self.model.device
        self._bank = None  # student.lora_batch.LoraBank, built on the first adaptation
        self._opt = None  # its SlotAdamW
        self._lora_key = None
        self._trained = 0  # slots 0.._trained-1 hold trained adapters in effect
        self._stop_ids: list[int] | None = None
        # answer.backend=vllm: training stays here; answers come from a vLLM engine that serves each
        # trained adapter as a runtime LoRA (exported as PEFT when first needed, see student.vllm_answer).
        self._vllm, self._adapter_dirs = None, {}
        if cfg.answer.backend == "vllm":
            from orchestration.core import catalog
            from student.vllm_answer import VLLMAnswerer

            self._vllm = VLLMAnswerer(catalog.resolve(cfg.model, catalog.cache_dir(cache)), cfg.answer,
                                      lora_rank=cfg.lora.r, add_special_tokens=not self.chat,
                                      trust_remote_code=cfg.trust_remote_code)

    # ----- prompting and answering -------------------------------------------------------
    def prompt(self, question: str) -> str:
        cfg = self.cfg.answer
        shots = [(e.question, e.answer) for e in cfg.examples]
        if self.chat:
            msgs = []
            for q, a in shots:
                msgs += [{"role": "user", "content": f"{cfg.instruction}\nQuestion: {q}"},
                         {"role": "assistant", "content": a}]
            msgs.append({"role": "user", "content": f"{cfg.instruction}\nQuestion: {question}"})
            return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        lines = [cfg.instruction] + [f"Question: {q}\nAnswer: {a}" for q, a in shots]
        return "\n".join(lines + [f"Question: {question}\nAnswer:"])

    def _autocast(self):
        import torch

        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def eos_ids(self) -> list[int]:
        """The model's end-of-sequence token ids (generation config and tokenizer)."""
        return eos_ids(self.model.generation_config, self.tok)

    def stop_ids(self) -> list[int]:
        """Token ids that end an answer: EOS, and every token whose text holds a newline.

        Passed as ``eos_token_id``, they stop each row at its first newline for free. transformers'
        ``stop_strings`` does the same by matching strings each step, which doubled the answer time
        of gemma3 (262k-token vocabulary). A newline is one character, so it always lies inside
        one token and no stop is missed. Computed once per student (1.4 s for gemma3's vocabulary).
        """
        if self._stop_ids is None:
            texts = self.tok.batch_decode([[i] for i in range(len(self.tok))])
            newline = [i for i, t in enumerate(texts) if "\n" in t]
            self._stop_ids = sorted({*self.eos_ids(), *newline})
        return self._stop_ids

    def raw_prompt(self, text: str) -> str:
        """A domain's whole prompt, as the model is prompted: one user turn for chat models."""
        if self.chat:
            return self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                add_generation_prompt=True)
        return text

    def _slot(self) -> int:
        return 0 if self._trained else -1

    def answer(self, questions: list[str], max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers (slot 0's adapter, if trained), batched; each cut at its first newline (or
        EOS). Without the passage."""
        return self._run([self.prompt(q) for q in questions], [self._slot()] * len(questions),
                         max_new_tokens or self.cfg.answer.max_new_tokens, None)

    def complete(self, texts: list[str], max_new_tokens: int, stop: str) -> list[str]:
        """Greedy continuations of raw prompts, each cut at its first ``stop`` string (or EOS)."""
        return self._run([self.raw_prompt(t) for t in texts], [self._slot()] * len(texts), max_new_tokens, stop)

    def respond(self, queries: list[Query], decode: Decode) -> list[str]:
        """Answers to a domain's queries (`orchestration.core.domains.spec`), per its decode rule,
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
        if any(not -1 <= a < self._trained for a in adapters):
            raise ValueError(f"adapters {adapters} name slots without a trained adapter (trained: "
                             f"0..{self._trained - 1}; -1 = the base model); train_many first")
        stop = None if decode.style == "question" else ("\n\n" if decode.stop == "blank" else "\n")
        render = self.prompt if stop is None else self.raw_prompt
        out: list[list[str | None]] = [[None] * len(qs) for qs in queries]
        for budget in sorted({q.max_new_tokens for qs in queries for q in qs}):
            where = [(g, i) for g, qs in enumerate(queries) for i, q in enumerate(qs) if q.max_new_tokens == budget]
            got = self._run([render(queries[g][i].text) for g, i in where], [adapters[g] for g, _ in where],
                            budget, stop)
            for (g, i), a in zip(where, got):
                out[g][i] = a
        return out

    def _run(self, prompts: list[str], slots: list[int], max_new_tokens: int, stop: str | None) -> list[str]:
        """Greedy answers of rendered prompts, row n through slot ``slots[n]``. ``stop`` None: an
        answer is its first line, stripped (stops on any newline token); else cut at ``stop``."""
        if self._vllm is not None:
            out: list[str | None] = [None] * len(prompts)
            for s in sorted(set(slots)):  # one adapter per engine call
                idx = [n for n, x in enumerate(slots) if x == s]
                got = self._vllm.answer([prompts[n] for n in idx], self._vllm_dir(s) if s >= 0 else None,
                                        max_new_tokens=max_new_tokens, stop=stop or "\n")
                for n, a in zip(idx, got):
                    out[n] = a
            return out
        if stop is None:
            outs = self._generate(prompts, slots, max_new_tokens, self.stop_ids(), None)
            return [t.split("\n", 1)[0].strip() for t in outs]
        return [t.split(stop, 1)[0] for t in self._generate(prompts, slots, max_new_tokens, self.eos_ids(), [stop])]

    def _vllm_dir(self, slot: int) -> str:
        """Slot's adapter as a PEFT folder the engine can load, saved on first use (again if the
        engine's adapter book has since deleted it)."""
        folder = self._adapter_dirs.get(slot)
        if folder is None or not Path(folder).exists():
            folder = self._adapter_dirs[slot] = self._vllm.save_adapter(lambda d: self.export_peft(slot, d))
        return folder

    def _route(self, slots: list[int]):
        if self._bank is None:
            return nullcontext()  # no adapter was ever built: every row is the base model
        return self._bank.route(slots)

    def _generate(self, prompts: list[str], slots: list[int], max_new_tokens: int, eos_ids: list[int],
                  stop_strings: list[str] | None) -> list[str]:
        """Left-padded greedy generate calls of at most ``answer.batch_size`` rows per adapter in the
        call (K adapters: batch_size x K rows), rows in the order given."""
        import torch

        bs = self.cfg.answer.batch_size * max(1, len(set(slots)))
        out = []
        for i in range(0, len(prompts), bs):
            enc = self.tok(prompts[i:i + bs], return_tensors="pt", padding=True, add_special_tokens=not self.chat)
            enc = enc.to(self.device)
            extra = {}
            if stop_strings:  # one per batch: it remembers where the batch's prompts end
                from transformers import StoppingCriteriaList

                extra = {"stopping_criteria": StoppingCriteriaList([_TailStop(self.tok, stop_strings)])}
            # greedy generate keeps its rows in place, so one routing holds for the whole call
            with torch.inference_mode(), self._autocast(), self._route(slots[i:i + bs]):
                gen = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.tok.pad_token_id, eos_token_id=eos_ids, **extra)
            out += [self.tok.decode(row, skip_special_tokens=True) for row in gen[:, enc["input_ids"].shape[1]:]]
        return out

    # ----- adaptation ----------------------------------------------------------------------
    def _bank_for(self, slots: int):
        """The adapter bank, rebuilt when the LoRA shape changes or it has fewer than ``slots`` slots."""
        from student.lora_batch import LoraBank, SlotAdamW

        lora = self.cfg.lora
        key = (lora.r, lora.alpha, lora.dropout, tuple(lora.target_modules))
        if self._bank is None or self._lora_key != key or self._bank.slots < slots:
            if self._bank is not None:
                self._bank.close()
                self._bank = self._opt = None
                trim_cpu_memory()
            self._bank = LoraBank(self.model, slots, lora.r, lora.alpha, lora.dropout, list(lora.target_modules))
            self._opt, self._lora_key = SlotAdamW(self._bank.flat, self._bank.grad), key
        return self._bank

    def _batches(self, ids: list[list[int]], labels: list[list[int]], train: TrainSettings, rng: random.Random):
        """One epoch of right-padded batches; labels are -100 on pads (and on prompt tokens a spec
        puts no loss on) so they carry no loss.

        Sequences are sorted by length, cut into batches of ``batch_size``, and the batch order is
        shuffled: a long passage is not padded against short edit items (padding is compute
        thrown away).
        """
        import torch

        order = sorted(range(len(ids)), key=lambda j: (len(ids[j]), j))
        groups = [order[i:i + train.batch_size] for i in range(0, len(order), train.batch_size)]
        rng.shuffle(groups)
        pad = self.tok.pad_token_id
        for group in groups:
            rows = [ids[j] for j in group]
            width = max(map(len, rows))
            inp = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            lab = torch.full((len(rows), width), -100, dtype=torch.long)
            for r, (j, seq) in enumerate(zip(group, rows)):
                inp[r, :len(seq)] = torch.tensor(seq)
                mask[r, :len(seq)] = 1
                lab[r, :len(seq)] = torch.tensor(labels[j])
            yield inp.to(self.device), mask.to(self.device), lab.to(self.device)

    def _encode(self, spec: TrainSpec, max_length: int) -> tuple[list[list[int]], list[list[int]], int, int]:
        """(input ids, labels, sequences truncated, pairs left out) of a spec's training data.

        Sequences carry loss on every token and are cut to ``max_length``. A pair is its prompt
        rendered like a raw query, then its target; the prompt's labels are -100 unless
        ``prompt_loss``. A pair over ``max_length`` is left out rather than cut."""
        enc = self.tok(list(spec.sequences), truncation=False)["input_ids"] if spec.sequences else []
        truncated = sum(len(x) > max_length for x in enc)
        ids = [x[:max_length] for x in enc if x]
        labels = [list(x) for x in ids]
        too_long = 0
        for prompt, target in spec.pairs:
            p = self.tok(self.raw_prompt(prompt), add_special_tokens=not self.chat)["input_ids"]
            t = self.tok(target, add_special_tokens=False)["input_ids"]
            if len(p) + len(t) > max_length:
                too_long += 1
                continue
            ids.append(p + t)
            labels.append((p if spec.prompt_loss else [-100] * len(p)) + t)
        return ids, labels, truncated, too_long

    def _plan(self, slot: int, spec: TrainSpec, seed: int) -> _Run:
        """An adaptation's recipe (a spec may override the learning rate and epochs) and its batches:
        each epoch reshuffles its own batch order with its own ``random.Random(seed)``."""
        train = self.cfg.train
        lr = spec.learning_rate if spec.learning_rate is not None else learning_rate_of(self.cfg)
        epochs = spec.epochs if spec.epochs is not None else train.epochs
        ids, labels, truncated, too_long = self._encode(spec, train.max_length)
        rng = random.Random(seed)

        def batches():
            for epoch in range(epochs if ids else 0):
                for batch in self._batches(ids, labels, train, rng):
                    yield epoch, batch

        run = _Run(slot, seed, lr, len(ids), truncated, too_long, batches())
        run.next = next(run.batches, None)
        return run

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
        if len(seeds) != len(specs) or not specs:
            raise ValueError(f"train_many needs one seed per spec and at least one spec; got {len(specs)} specs, "
                             f"{len(seeds)} seeds")
        t0 = time.perf_counter()
        keep = not fresh and self._trained >= len(specs)
        bank = self._bank if keep else self._bank_for(len(specs))
        self._trained, self._adapter_dirs = 0, {}
        runs = []
        for k, (spec, seed) in enumerate(zip(specs, seeds)):
            if not keep:
                bank.reset(k, seed)
            self._opt.reset(k)
            runs.append(self._plan(k, spec, seed))
            if runs[-1].next is None:
                runs[-1].train_s = time.perf_counter() - t0
        max_steps = self.cfg.train.max_steps
        self.model.train()
        try:
            while live := [r for r in runs if r.next is not None]:
                for r, loss in zip(live, self._fused_step(live)):
                    epoch, (_, mask, _) = r.next
                    if epoch != r.epoch:
                        r.epoch, r.epoch_losses = epoch, []
                    if r.steps == 0:
                        r.first = loss
                    r.steps += 1
                    r.real += int(mask.sum())
                    r.epoch_losses.append(loss)
                    r.next = None if max_steps and r.steps >= max_steps else next(r.batches, None)
                    if r.next is None:
                        r.train_s = time.perf_counter() - t0
        finally:
            self.model.eval()
        self._trained = len(specs)
        return [r.stats() for r in runs]

    def _fused_step(self, live: list[_Run]) -> list[float]:
        """One optimizer step of every adaptation in ``live`` on its next batch; their losses.

        The batches' rows are sorted by length and run in passes of about ``train.pass_tokens``
        padded tokens (`_passes`), each pass's backward accumulating into its adapters' grads, so
        a long passage row is not padded against short edit rows of other adaptations. Each
        adaptation's loss is its own batch's mean over its labelled tokens, whichever passes its
        rows fall in."""
        import torch
        import torch.nn.functional as F

        batches = [r.next[1] for r in live]
        counts = torch.stack([(b[2][:, 1:] != -100).sum() for b in batches])
        sums = torch.zeros(len(live), dtype=torch.float32, device=self.device)
        for rows in _passes(batches, self.cfg.train.pass_tokens):
            width = max(n for n, _, _ in rows)
            inp, mask, lab = (torch.stack([F.pad(batches[g][n][j, :width], (0, width - min(width, batches[g][n].shape[1])),
                                                 value=v) for _, g, j in rows])
                              for n, v in ((0, self.tok.pad_token_id), (1, 0), (2, -100)))
            group = torch.tensor([g for _, g, _ in rows], device=self.device)
            with self._bank.route([live[g].slot for _, g, _ in rows]):  # backward too: checkpointed chunks recompute
                with self._autocast():  # no KV cache: training never reads one back
                    part = self._loss_sums(inp, mask, lab, group, len(live))
                if part.requires_grad:  # not when no row has a labelled token
                    with self._bank.quiet_backward():
                        (part / counts.clamp(min=1)).sum().backward()
            sums += part.detach()
        self._opt.step({r.slot: r.lr for r in live}, self.cfg.train.weight_decay)
        self._bank.zero_grad([r.slot for r in live])
        return (sums / counts.clamp(min=1)).tolist()

    def _loss_sums(self, inp, mask, lab, group, n: int):
        """(n,) summed next-token loss of each group of rows over its labelled tokens; ``group``
        (rows,) says which of the n groups a row belongs to. Divided by a group's labelled tokens it
        is HF's ``model(labels=...).loss``, computed without the logits of unlabelled positions."""
        import torch

        decoder = getattr(self.model, self.model.base_model_prefix)
        hidden = decoder(input_ids=inp, attention_mask=mask, use_cache=False).last_hidden_state  # (rows, width, d)
        target = lab[:, 1:]
        keep = target != -100
        tokens = token_losses(self.model, hidden[:, :-1][keep], target[keep])  # (labelled tokens,)
        owner = group[:, None].expand_as(target)[keep]
        return torch.zeros(n, dtype=tokens.dtype, device=tokens.device).index_add(0, owner, tokens)

    def export_peft(self, slot: int, folder: str | Path) -> None:
        """Write slot's adapter as a PEFT adapter folder (adapter_config.json and
        adapter_model.safetensors, PEFT's key names), loadable by ``PeftModel.from_pretrained``
        and by vLLM."""
        from peft import LoraConfig
        from safetensors.torch import save_file

        if self._bank is None or not 0 <= slot < self._bank.slots:
            raise ValueError(f"no adapter slot {slot} to export; train first")
        r, alpha, dropout, targets = self._lora_key
        LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), task_type="CAUSAL_LM",
                   base_model_name_or_path=self.model.name_or_path).save_pretrained(str(folder))
        save_file(self._bank.peft_state(slot), str(Path(folder) / "adapter_model.safetensors"),
                  metadata={"format": "pt"})

    def merge_adapter(self) -> None:
        """Fold slot 0's trained adapter into the base weights for good (continual mode, as the paper
        did): later adaptations start from the adapted model, with a fresh adapter."""
        if not self._trained:
            return
        if self._vllm is not None:
            raise ValueError("merging adapters needs student.answer.backend=transformers: the vLLM engine "
                             "keeps serving the unmerged base weights")
        self._bank.merge(0)
        self._trained = 0
        trim_cpu_memory()

    def discard(self) -> None:
        """Drop the trained adapters: back to the exact base model (no row goes through a slot)."""
        self._trained, self._adapter_dirs = 0, {}
        trim_cpu_memory()

    @contextmanager
    def adapted(self, spec: TrainSpec | list[str], seed: int | None = None):
        """``with student.adapted(spec) as stats: student.answer(...)``; discarded on exit."""
        try:
            yield self.train(spec, seed=seed)
        finally:
            self.discard()
