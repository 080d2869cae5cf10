"""A loaded student: one base model per process, fresh LoRA adapters attached, trained and discarded.

The base model is wrapped by PEFT once. Each adaptation re-initialises the adapter weights in place
(seeded: A ~ Kaiming, B = 0, so a fresh adapter is exactly the base model) and trains them with a
plain AdamW loop, so no adaptation ever reloads or copies the base weights. The loop departs from the
reference implementation on purpose: batches are padded only to their longest sequence and the loss
counts real tokens only (the reference pads to 2048 and trains on the pads).

Shapes: input_ids / attention_mask / labels are (batch, longest sequence in the batch).
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

from orchestration.core.domains.spec import TrainSpec
from orchestration.core.models import autocast_dtype, eos_ids, load_model, trim_cpu_memory, uses_chat
from student.config import LoraSettings, StudentConfig, TrainSettings


@dataclass(frozen=True)
class TrainStats:
    steps: int
    sequences: int
    real_tokens: int  # non-pad tokens trained on, summed over epochs
    truncated: int  # sequences cut to max_length
    too_long: int  # (prompt, target) pairs longer than max_length, left out (a cut target teaches a wrong answer)
    first_loss: float
    final_loss: float  # mean loss of the last epoch
    train_s: float  # wall seconds
    seed: int


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


class Student:
    def __init__(self, cfg: StudentConfig, cache: str | None = None):
        import torch

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        # The frozen base is stored in the autocast dtype: autocast does not cache casts of weights
        # that need no grad, so fp32 weights would be re-cast on every matmul. LoRA weights stay
        # fp32 (PEFT upcasts adapters), so the optimizer state is fp32 as usual.
        self.dtype = autocast_dtype(cfg.train.dtype, "student.train.dtype")
        attn = cfg.attn_implementation or ("eager" if not torch.cuda.is_available() else None)
        self.model, self.tok = load_model(cfg.model, cache=cache, trust_remote_code=cfg.trust_remote_code,
                                          dtype=self.dtype, attn_implementation=attn)
        self.chat = uses_chat(self.tok, cfg.chat)
        self.device = self.model.device
        self._peft = None  # the PEFT-wrapped model, built on first adaptation
        self._lora_key = None
        self._active = False  # is a trained adapter in effect?
        self._stop_ids: list[int] | None = None
        # answer.backend=vllm: training stays PEFT here; answers come from a vLLM engine that serves
        # each trained adapter as a runtime LoRA (saved after training, see student.vllm_answer).
        self._vllm, self._adapter_dir = None, None
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

    def answer(self, questions: list[str], max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers, batched; each cut at its first newline (or EOS). Without the passage."""
        prompts = [self.prompt(q) for q in questions]
        if self._vllm is not None:
            return self._vllm.answer(prompts, self._adapter_dir if self._active else None, max_new_tokens=max_new_tokens)
        return [t.split("\n", 1)[0].strip() for t in
                self._generate(prompts, max_new_tokens or self.cfg.answer.max_new_tokens, self.stop_ids(), None)]

    def complete(self, texts: list[str], max_new_tokens: int, stop: str) -> list[str]:
        """Greedy continuations of raw prompts, each cut at its first ``stop`` string (or EOS)."""
        if self._vllm is not None:
            return self._vllm.answer([self.raw_prompt(t) for t in texts], self._adapter_dir if self._active else None,
                                     max_new_tokens=max_new_tokens, stop=stop)
        outs = self._generate([self.raw_prompt(t) for t in texts], max_new_tokens, self.eos_ids(), [stop])
        return [t.split(stop, 1)[0] for t in outs]

    def respond(self, queries, decode) -> list[str]:
        """Answers to a domain's queries (`orchestration.core.domains.spec`), per its decode rule;
        queries with the same token budget are batched together."""
        out: list[str | None] = [None] * len(queries)
        for budget in sorted({q.max_new_tokens for q in queries}):
            idx = [i for i, q in enumerate(queries) if q.max_new_tokens == budget]
            texts = [queries[i].text for i in idx]
            if decode.style == "question":
                got = self.answer(texts, budget)
            else:
                got = self.complete(texts, budget, "\n\n" if decode.stop == "blank" else "\n")
            for i, a in zip(idx, got):
                out[i] = a
        return out

    def _generate(self, prompts: list[str], max_new_tokens: int, eos_ids: list[int],
                  stop_strings: list[str] | None) -> list[str]:
        import torch

        lm = self._peft if self._peft is not None else self.model
        # Between adaptations the wrapper holds a zeroed adapter: bypass it rather than pay for it.
        bypass = self._peft.disable_adapter() if self._peft is not None and not self._active else nullcontext()
        bs, out = self.cfg.answer.batch_size, []
        with bypass:
            for i in range(0, len(prompts), bs):
                enc = self.tok(prompts[i:i + bs], return_tensors="pt", padding=True, add_special_tokens=not self.chat)
                enc = enc.to(self.device)
                extra = {}
                if stop_strings:  # one per batch: it remembers where the batch's prompts end
                    from transformers import StoppingCriteriaList

                    extra = {"stopping_criteria": StoppingCriteriaList([_TailStop(self.tok, stop_strings)])}
                with torch.inference_mode(), self._autocast():
                    gen = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=self.tok.pad_token_id, eos_token_id=eos_ids, **extra)
                out += [self.tok.decode(row, skip_special_tokens=True) for row in gen[:, enc["input_ids"].shape[1]:]]
        return out

    # ----- adaptation ----------------------------------------------------------------------
    def _fresh_adapter(self, lora: LoraSettings, seed: int):
        """Wrap the base once per LoRA shape; afterwards re-initialise the adapter in place."""
        import torch
        from peft import LoraConfig, get_peft_model
        from peft.tuners.lora import LoraLayer

        key = (lora.r, lora.alpha, lora.dropout, tuple(lora.target_modules))
        if self._lora_key != key:
            if self._peft is not None:
                self.model = self._peft.unload()
            conf = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
            self._peft, self._lora_key = get_peft_model(self.model, conf), key
            if self.dtype is not None:
                # PEFT casts each adapter input to the adapter's fp32 dtype, and autocast casts it
                # straight back to bf16 for the matmul: two copies per adapter per pass, for nothing.
                for module in self._peft.modules():
                    if isinstance(module, LoraLayer):
                        module.cast_input_dtype_enabled = False
        torch.manual_seed(seed)  # after any wrapping, so the init does not depend on history
        for module in self._peft.modules():
            if isinstance(module, LoraLayer):
                module.reset_lora_parameters("default", True)
        return self._peft

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

    def train(self, spec: TrainSpec | list[str], fresh: bool = True, seed: int | None = None) -> TrainStats:
        """Attach a fresh adapter and train it on ``spec`` (or plain sequences) per ``cfg.train``
        and ``cfg.lora`` (a spec may override the learning rate and epochs); it stays active until
        `discard` (or `merge_adapter`). ``fresh=False`` trains the adapter already in place further
        (continual mode without merging). ``seed`` (adapter init and batch order) defaults to
        ``cfg.train.seed``; a job passes its own, so no job changes the config another one reads."""
        import torch

        if not isinstance(spec, TrainSpec):
            spec = TrainSpec(sequences=tuple(spec))
        train = self.cfg.train
        lr = spec.learning_rate if spec.learning_rate is not None else train.learning_rate
        epochs = spec.epochs if spec.epochs is not None else train.epochs
        seed = train.seed if seed is None else seed
        t0 = time.perf_counter()
        model = self._fresh_adapter(self.cfg.lora, seed) if fresh or self._peft is None else self._peft
        ids, labels, truncated, too_long = self._encode(spec, train.max_length)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=train.weight_decay)
        rng = random.Random(seed)
        model.train()
        steps, real, first, epoch_losses = 0, 0, float("nan"), []
        self._active = True
        for _ in range(epochs if ids else 0):
            epoch_losses = []
            for inp, mask, labels_t in self._batches(ids, labels, train, rng):
                with self._autocast():  # no KV cache: training never reads one back
                    loss = model(input_ids=inp, attention_mask=mask, labels=labels_t, use_cache=False).loss
                loss.backward()
                if steps == 0:
                    first = loss.item()
                opt.step()
                opt.zero_grad(set_to_none=True)
                steps += 1
                real += int(mask.sum())
                epoch_losses.append(loss.item())
                if train.max_steps and steps >= train.max_steps:
                    break
            if train.max_steps and steps >= train.max_steps:
                break
        model.eval()
        if self._vllm is not None:
            self._adapter_dir = self._vllm.save_adapter(model)
        final = sum(epoch_losses) / max(1, len(epoch_losses))
        return TrainStats(steps, len(ids), real, truncated, too_long, first, final, time.perf_counter() - t0, seed)

    def merge_adapter(self) -> None:
        """Fold the trained adapter into the base weights for good (continual mode, as the paper
        did): later adaptations start from the adapted model, with a new adapter."""
        if self._peft is None:
            return
        if self._vllm is not None:
            raise ValueError("merging adapters needs student.answer.backend=transformers: the vLLM engine "
                             "keeps serving the unmerged base weights")
        self.model = self._peft.merge_and_unload()
        self._peft, self._lora_key, self._active = None, None, False
        trim_cpu_memory()

    def discard(self) -> None:
        """Drop the trained adapter: back to the exact base model (B = 0 makes LoRA a no-op)."""
        from peft.tuners.lora import LoraLayer

        self._active, self._adapter_dir = False, None
        if self._peft is None:
            return
        for module in self._peft.modules():
            if isinstance(module, LoraLayer):
                module.reset_lora_parameters("default", True)
        trim_cpu_memory()

    @contextmanager
    def adapted(self, spec: TrainSpec | list[str], seed: int | None = None):
        """``with student.adapted(spec) as stats: student.answer(...)``; discarded on exit."""
        try:
            yield self.train(spec, seed=seed)
        finally:
            self.discard()
