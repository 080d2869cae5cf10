"""The transformers generation backend, and `make_backend`, which loads the backend a config names.

`TransformersBackend` implements `teacher.backend.Backend` (``generate(prompts, n, greedy=, seed=)``,
``close()``, and the ``tokenizer`` and ``chat`` attributes callers need to render prompts with
`teacher.prompts`); the vLLM backend (`teacher.vllm_backend`, ``generation.backend: vllm``) is the
other implementation.

The transformers backend departs from a plain loop over prompts in three ways, all for throughput
on a small CPU: every (prompt, sample) pair is flattened into one list and generated in batches of
``generation.batch_size``; the list is sorted by prompt length first, so a batch holds prompts of
similar length and little compute goes to left padding; and weights are held in bf16 under
autocast where the CPU has fast bf16. Sampling draws from a private ``torch.Generator`` per batch,
seeded from (seed, batch index): never from torch's global RNG, which other threads of the driver
reseed (TRL's ``set_seed`` in SFT, PEFT's adapter init) while `async_rounds` generates. So the same
(prompts, n, seed, batch_size) gives the same edits on the same machine, whatever else runs.
"""

from __future__ import annotations

import gc
from contextlib import nullcontext

from core.models import autocast_dtype, eos_ids, resolve_device, uses_chat
from teacher.backend import Backend, Generation, batch_seed, check_sampling
from teacher.config import TeacherConfig
from teacher.prompts import tokenize_prompt
from teacher.versions import load_teacher

BACKENDS = ("transformers", "vllm")


def finish(tokenizer, row: list[int], stops: set[int]) -> Generation:
    """Cut one generated row (prompt removed) at its first stop token and decode it."""
    end = next((k for k, t in enumerate(row) if t in stops), None)
    n = len(row) if end is None else end + 1
    return Generation(tokenizer.decode(row[:n], skip_special_tokens=True).strip(), n, end is not None)


class NucleusSampler:
    """Temperature + top-p sampling as a logits processor: it draws the next token itself and hands
    back a row that is -inf everywhere but there, so generate() runs in greedy mode and its argmax
    picks the drawn token.

    Why not generate(do_sample=True): transformers sorts the whole vocabulary for top_p and draws
    with torch.multinomial over all of it, every step: with SmolLM2's 49k vocabulary and 32 rows,
    ~80 ms a step on a 2-core CPU, more than the model's own decode step. Here a token is drawn from
    the full distribution by inverse CDF (cumsum + searchsorted) and kept if it lies in the nucleus
    (the tokens more likely than it hold less than top_p of the mass); rows whose draw falls outside
    are drawn again. Rejection sampling gives exactly the renormalised nucleus distribution, in a few
    ms a step; the expected number of rounds is at most 1 / top_p.

    Shapes: input_ids (rows, length so far), scores (rows, vocab) fp32; returns (rows, vocab).
    """

    def __init__(self, temperature: float, top_p: float, generator=None):
        self.temperature, self.top_p, self.generator = temperature, top_p, generator

    def __call__(self, input_ids, scores):
        import torch

        probs = torch.softmax(scores / self.temperature, dim=-1)
        cdf = probs.cumsum(-1)
        token = torch.empty((probs.shape[0], 1), dtype=torch.long, device=probs.device)
        rows = torch.arange(probs.shape[0], device=probs.device)  # rows still to draw
        p, c = probs, cdf
        while rows.numel():
            u = torch.rand((rows.numel(), 1), device=p.device, generator=self.generator) * c[:, -1:]
            t = torch.searchsorted(c, u, right=True).clamp_(max=p.shape[-1] - 1)  # (rows left, 1)
            if self.top_p >= 1.0:
                ok = torch.ones(rows.numel(), dtype=torch.bool, device=p.device)
            else:  # in the nucleus: the tokens more likely than it hold less than top_p
                ok = torch.where(p > p.gather(-1, t), p, 0.0).sum(-1) < self.top_p
            token[rows[ok]] = t[ok]
            rows = rows[~ok]
            p, c = probs[rows], cdf[rows]
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)


class ChoiceConstraint:
    """Logits processor that keeps every row on the way to one of a finite set of texts.

    The texts' canonical tokenizations form a trie; at each step a row may only take a child of
    the node its generated tokens (from column ``start``) lead to, and where a text is complete, a
    stop token. Everything else is set to -inf before sampling, so `NucleusSampler` (or greedy)
    draws from the teacher's own distribution renormalised over the allowed tokens. Rows that
    already stopped are off the trie and left alone (generate() pads them).

    Shapes: input_ids (rows, length so far), scores (rows, vocab); returns (rows, vocab).
    """

    END = -1  # trie key of "a text ends here"

    def __init__(self, trie: dict, stops: list[int], start: int):
        self.trie, self.stops, self.start = trie, stops, start

    @staticmethod
    def build(tokenizer, texts: list[str]) -> tuple[dict, int]:
        """(trie, longest text in tokens)."""
        trie: dict = {}
        longest = 0
        for text in texts:
            ids = tokenizer.encode(text, add_special_tokens=False)
            longest = max(longest, len(ids))
            node = trie
            for t in ids:
                node = node.setdefault(t, {})
            node[ChoiceConstraint.END] = {}
        return trie, longest

    def __call__(self, input_ids, scores):
        import torch

        allowed = torch.zeros_like(scores, dtype=torch.bool)
        for r, row in enumerate(input_ids[:, self.start:].tolist()):
            node = self.trie
            for t in row:
                node = node.get(t)
                if node is None:
                    break
            if node is None:  # stopped: generate() overwrites the row with pads
                allowed[r] = True
                continue
            nxt = [t for t in node if t != self.END] + (self.stops if self.END in node else [])
            allowed[r, nxt] = True
        return scores.masked_fill(~allowed, float("-inf"))


class TransformersBackend:
    """Batched sampling with ``model.generate`` in this process (the CPU default)."""

    def __init__(self, model: str, cfg: TeacherConfig, cache: str | None = None):
        import torch

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.model_name = model
        # Weights held in the autocast dtype: autocast does not cache casts of weights outside
        # autograd, so fp32 weights would be re-cast to bf16 on every matmul of every step.
        device = resolve_device(cfg.device, "teacher.device")
        self.dtype = autocast_dtype(cfg.generation.dtype, "teacher.generation.dtype", device)
        self.model, self.tokenizer = load_teacher(model, cache=cache, trust_remote_code=cfg.trust_remote_code,
                                                  dtype=self.dtype, device=device)
        self.chat = uses_chat(self.tokenizer, cfg.chat, "teacher.chat")
        self.stops = eos_ids(self.model.generation_config, self.tokenizer)
        self._choice_trie: tuple | None = None  # (choices, trie) of the last constrained format

    def _autocast(self):
        import torch

        return torch.autocast(self.model.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def _left_pad(self, rows: list[list[int]]):
        """(batch, longest) input ids and attention mask, padded on the left so every row's
        last prompt token sits in the last column, where generation continues."""
        import torch

        width = max(map(len, rows))
        inp = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, seq in enumerate(rows):
            inp[r, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[r, width - len(seq):] = 1
        return inp.to(self.model.device), mask.to(self.model.device)

    def _sampling(self, greedy: bool, constraint: ChoiceConstraint | None = None, generator=None) -> dict:
        """generate() arguments: plain greedy, or greedy over the one-hot rows of `NucleusSampler`
        (drawing from ``generator``); a `ChoiceConstraint` masks the logits first."""
        from transformers import LogitsProcessorList

        g = self.cfg.generation
        procs = [constraint] if constraint is not None else []
        if not greedy:
            procs.append(NucleusSampler(g.temperature, g.top_p, generator))
        return {"do_sample": False, **({"logits_processor": LogitsProcessorList(procs)} if procs else {})}

    def _trie(self, choices: list[str]) -> dict:
        key = tuple(choices)
        if self._choice_trie is None or self._choice_trie[0] != key:
            trie, longest = ChoiceConstraint.build(self.tokenizer, choices)
            if longest + 1 > self.cfg.generation.max_new_tokens:
                raise ValueError(f"teacher.generation.max_new_tokens={self.cfg.generation.max_new_tokens} is too few "
                                 f"for the constrained edit format: its longest edit takes {longest} tokens plus "
                                 f"the stop token; raise it to at least {longest + 1}")
            self._choice_trie = (key, trie)
        return self._choice_trie[1]

    def generate(self, prompts: list[str], n: int, *, greedy: bool = False, seed: int = 0,
                 choices: list[str] | None = None) -> list[list[Generation]]:
        """`Backend.generate`; with ``choices``, every edit is one of those texts (see `ChoiceConstraint`)."""
        import torch

        g = self.cfg.generation
        check_sampling(g, n, greedy)
        ids = [tokenize_prompt(self.tokenizer, p, self.chat) for p in prompts]
        # Sorted by prompt length (stable: ties keep prompt order, a prompt's samples stay together).
        jobs = sorted(((i, s) for i in range(len(prompts)) for s in range(n)), key=lambda j: len(ids[j[0]]))
        batches = [jobs[k:k + g.batch_size] for k in range(0, len(jobs), g.batch_size)]
        trie = self._trie(choices) if choices is not None else None
        out: list[list] = [[None] * n for _ in prompts]  # filled in as batches finish
        stops = set(self.stops)
        for b, batch in enumerate(batches):  # the progress bar is the caller's, over all its chunks
            inp, mask = self._left_pad([ids[i] for i, _ in batch])
            constraint = ChoiceConstraint(trie, self.stops, inp.shape[1]) if trie is not None else None
            generator = torch.Generator(device=inp.device).manual_seed(batch_seed(seed, b))
            sampling = self._sampling(greedy, constraint, generator)
            with torch.inference_mode(), self._autocast():
                gen = self.model.generate(input_ids=inp, attention_mask=mask, max_new_tokens=g.max_new_tokens,
                                          eos_token_id=self.stops, pad_token_id=self.tokenizer.pad_token_id,
                                          **sampling)
            for (i, s), row in zip(batch, gen[:, inp.shape[1]:].tolist()):
                out[i][s] = finish(self.tokenizer, row, stops)
        return out

    def close(self) -> None:
        """Free the model (the driver loads the next teacher version into the same process)."""
        self.model = None
        gc.collect()


def make_backend(model: str, cfg: TeacherConfig, cache: str | None = None) -> Backend:
    """The generation backend named by ``cfg.generation.backend``, loaded with ``model``."""
    name = cfg.generation.backend
    if name == "transformers":
        return TransformersBackend(model, cfg, cache)
    if name == "vllm":
        from teacher.vllm_backend import VLLMBackend  # imports vllm only when chosen

        return VLLMBackend(model, cfg, cache)
    raise ValueError(f"teacher.generation.backend must be one of {', '.join(BACKENDS)}, got {name!r}")
