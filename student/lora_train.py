"""The LoRA training loop: K adaptations of one frozen model trained together (`LoraTrainer.train_many`).

A round is hundreds of independent adaptations of the same frozen student, and one alone (batch 4,
~200 real tokens a step) leaves the hardware idle. So K adapters train together: every fused step
takes the next batch of each adaptation still training, runs the base's matmuls once over all their
rows, each row through its own adapter (`student.lora_batch`), and sums the adaptations' own mean
losses, which gives each adapter exactly its own gradient (their weights are disjoint). Each
adaptation keeps its whole recipe: its seeded init, its AdamW state, learning rate, epochs, batches,
batch order and step budget, so K trained together equal the same K trained one at a time within
float tolerance (tests/student/test_batched.py).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from orchestration.core.domains.spec import TrainSpec
from orchestration.core.models import trim_cpu_memory
from student.config import StudentConfig, TrainSettings, learning_rate_of
from student.prompting import raw_prompt


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


class LoraTrainer:
    """A bank of LoRA adapter slots on one frozen model, and the fused loop that trains them.

    ``cfg`` is the student's config, read at every call (its ``train`` and ``lora`` nodes);
    ``autocast()`` is the student's autocast context. ``trained``: slots 0..trained-1 hold trained
    adapters (the student answers through them until it sets it back to 0).
    """

    def __init__(self, model, tok, chat: bool, cfg: StudentConfig, autocast: Callable[[], ContextManager]):
        self.model, self.tok, self.chat, self.cfg, self.autocast = model, tok, chat, cfg, autocast
        self.device = model.device
        self.bank = None  # student.lora_batch.LoraBank, built on the first adaptation
        self.opt = None  # its SlotAdamW
        self.lora_key = None
        self.trained = 0

    def bank_for(self, slots: int):
        """The adapter bank, rebuilt when the LoRA shape changes or it has fewer than ``slots`` slots."""
        from student.lora_batch import LoraBank, SlotAdamW

        lora = self.cfg.lora
        key = (lora.r, lora.alpha, lora.dropout, tuple(lora.target_modules))
        if self.bank is None or self.lora_key != key or self.bank.slots < slots:
            if self.bank is not None:
                self.bank.close()
                self.bank = self.opt = None
                trim_cpu_memory()
            self.bank = LoraBank(self.model, slots, lora.r, lora.alpha, lora.dropout, list(lora.target_modules))
            self.opt, self.lora_key = SlotAdamW(self.bank.flat, self.bank.grad), key
        return self.bank

    # ----- training data -------------------------------------------------------------------
    def encode(self, spec: TrainSpec, max_length: int) -> tuple[list[list[int]], list[list[int]], int, int]:
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
            p = self.tok(raw_prompt(self.tok, self.chat, prompt), add_special_tokens=not self.chat)["input_ids"]
            t = self.tok(target, add_special_tokens=False)["input_ids"]
            if len(p) + len(t) > max_length:
                too_long += 1
                continue
            ids.append(p + t)
            labels.append((p if spec.prompt_loss else [-100] * len(p)) + t)
        return ids, labels, truncated, too_long

    def batches(self, ids: list[list[int]], labels: list[list[int]], train: TrainSettings, rng: random.Random):
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

    def _plan(self, slot: int, spec: TrainSpec, seed: int) -> _Run:
        """An adaptation's recipe (a spec may override the learning rate and epochs) and its batches:
        each epoch reshuffles its own batch order with its own ``random.Random(seed)``."""
        train = self.cfg.train
        lr = spec.learning_rate if spec.learning_rate is not None else learning_rate_of(self.cfg)
        epochs = spec.epochs if spec.epochs is not None else train.epochs
        ids, labels, truncated, too_long = self.encode(spec, train.max_length)
        rng = random.Random(seed)

        def batches():
            for epoch in range(epochs if ids else 0):
                for batch in self.batches(ids, labels, train, rng):
                    yield epoch, batch

        run = _Run(slot, seed, lr, len(ids), truncated, too_long, batches())
        run.next = next(run.batches, None)
        return run

    # ----- the loop ------------------------------------------------------------------------
    def train_many(self, specs: list[TrainSpec], seeds: list[int], fresh: bool = True) -> list[TrainStats]:
        """Train slot k on ``specs[k]`` with ``seeds[k]`` (its init and batch order), all K at once
        (`Student.train_many` documents the recipe); sets ``trained`` to K."""
        if len(seeds) != len(specs) or not specs:
            raise ValueError(f"train_many needs one seed per spec and at least one spec; got {len(specs)} specs, "
                             f"{len(seeds)} seeds")
        t0 = time.perf_counter()
        keep = not fresh and self.trained >= len(specs)
        bank = self.bank if keep else self.bank_for(len(specs))
        self.trained = 0
        runs = []
        for k, (spec, seed) in enumerate(zip(specs, seeds)):
            if not keep:
                bank.reset(k, seed)
            self.opt.reset(k)
            runs.append(self._plan(k, spec, seed))
            if runs[-1].next is None:
                runs[-1].train_s = time.perf_counter() - t0
        max_steps = self.cfg.train.max_steps
        self.model.train()
        try:
            while live := [r for r in runs if r.next is not None]:
                for r, loss in zip(live, self.fused_step(live)):
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
        self.trained = len(specs)
        return [r.stats() for r in runs]

    def fused_step(self, live: list[_Run]) -> list[float]:
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
            with self.bank.route([live[g].slot for _, g, _ in rows]):  # backward too: checkpointed chunks recompute
                with self.autocast():  # no KV cache: training never reads one back
                    part = self.loss_sums(inp, mask, lab, group, len(live))
                if part.requires_grad:  # not when no row has a labelled token
                    with self.bank.quiet_backward():
                        (part / counts.clamp(min=1)).sum().backward()
            sums += part.detach()
        self.opt.step({r.slot: r.lr for r in live}, self.cfg.train.weight_decay)
        self.bank.zero_grad([r.slot for r in live])
        return (sums / counts.clamp(min=1)).tolist()

    def loss_sums(self, inp, mask, lab, group, n: int):
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

    # ----- after training ------------------------------------------------------------------
    def export_peft(self, slot: int, folder: str | Path) -> None:
        """Write slot's adapter as a PEFT adapter folder (adapter_config.json and
        adapter_model.safetensors, PEFT's key names), loadable by ``PeftModel.from_pretrained``
        and by vLLM."""
        from peft import LoraConfig
        from safetensors.torch import save_file

        if self.bank is None or not 0 <= slot < self.bank.slots:
            raise ValueError(f"no adapter slot {slot} to export; train first")
        r, alpha, dropout, targets = self.lora_key
        LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), task_type="CAUSAL_LM",
                   base_model_name_or_path=self.model.name_or_path).save_pretrained(str(folder))
        save_file(self.bank.peft_state(slot), str(Path(folder) / "adapter_model.safetensors"),
                  metadata={"format": "pt"})

    def merge(self, slot: int) -> None:
        """Fold slot's trained adapter into the base weights for good; no slot is trained after."""
        self.bank.merge(slot)
        self.trained = 0
        trim_cpu_memory()
