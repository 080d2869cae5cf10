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
positions only, head + cross-entropy in chunks of tokens with its gradient taken in the forward
(`student.head_loss`), so the logits of a step (tokens x vocabulary: gigabytes for gemma3's 262k
vocabulary at K = 16) never exist all at once and are never recomputed.

On a GPU the host is the bottleneck, so batches stay on the host as token lists, each pass goes to
the device in one asynchronous copy, and nothing is read back until a step's losses, at its end.

Shapes: input_ids / attention_mask / labels are (rows, longest sequence among the rows).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from core.domains.spec import TrainSpec
from core.models import trim_cpu_memory
from student.config import StudentConfig, TrainSettings, learning_rate_of
from student.head_loss import token_losses
from student.lora_batch import to_device
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


@dataclass(frozen=True)
class Batch:
    """One training batch of an adaptation, kept on the host as token lists: a fused step builds the
    tensors of its passes from these, rows in the order the passes run them, and sends each pass to
    the device in one copy, so the loop never reads the device to learn a batch's lengths or labels."""

    ids: tuple[tuple[int, ...], ...]  # each row's token ids, unpadded
    labels: tuple[tuple[int, ...], ...]  # each row's labels: the ids, or -100 where a token carries no loss

    @property
    def real(self) -> int:  # non-pad tokens
        return sum(map(len, self.ids))

    @property
    def labelled(self) -> int:
        """Next-token targets that carry loss (a row's first token is no target)."""
        return sum(x != -100 for row in self.labels for x in row[1:])


def padded(ids, labels, pad: int):
    """(3, rows, longest) int64 host tensor of right-padded rows: input ids (``pad`` on pads),
    attention mask, labels (-100 on pads)."""
    import torch

    width = max(map(len, ids))
    return torch.tensor([[list(x) + [pad] * (width - len(x)) for x in ids],
                         [[1] * len(x) + [0] * (width - len(x)) for x in ids],
                         [list(y) + [-100] * (width - len(y)) for y in labels]], dtype=torch.long)


@dataclass
class _Run:
    """One adaptation inside a fused training loop: its slot, recipe, data and progress."""

    slot: int
    seed: int
    lr: float
    sequences: int
    truncated: int
    too_long: int
    batches: Iterator  # (epoch, Batch), in this adaptation's own order
    next: tuple | None = None  # (epoch, Batch) its next step trains on; None once it is done
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


PASS_OVERHEAD = 64
"""A pass's fixed cost in padded tokens, for cutting passes: the frozen smollm2-135m base (fp32, a
2-core CPU without bf16) ran forward + backward at 264 tokens/s for one 64-token row, 378 for four
and 436 for 32 (bench/inner_loop.py's ``base_shape_scan``): ~40-60 tokens' worth of time per pass."""


def _passes(lengths: list[list[int]], pass_tokens: int) -> list[list[tuple[int, int, int]]]:
    """The rows of a fused step's batches (``lengths[g]``: the real tokens of batch g's rows)
    cut into passes: (real length, batch, row), sorted longest first (ties in batch and row
    order), then split into runs of at most ``pass_tokens`` padded tokens (rows x the run's
    longest; a single longer row is a pass of its own) that minimise the padded tokens plus
    `PASS_OVERHEAD` per pass (dynamic programming over the sorted rows). Within a pass, rows come
    batch by batch, so full batches keep the bank's copy-free layout."""
    rows = sorted(((n, g, j) for g, b in enumerate(lengths) for j, n in enumerate(b)), key=lambda x: (-x[0], x[1], x[2]))
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


def _pass_tensors(batches: list[Batch], rows: list[tuple[int, int, int]], pad: int, device):
    """A pass's tensors on ``device``, from one host-to-device copy: input ids and attention mask
    (rows, width), and over its labelled tokens (labelled,): their positions in the flattened
    (rows, width) hidden states, their next tokens, and the batch each belongs to."""
    import torch

    host = padded([batches[g].ids[j] for _, g, j in rows], [batches[g].labels[j] for _, g, j in rows], pad)
    n, width = host.shape[1:]
    keep = (host[2, :, 1:] != -100).nonzero()  # (labelled, 2): row, position
    target = host[2, keep[:, 0], keep[:, 1] + 1]
    owner = torch.tensor([g for _, g, _ in rows])[keep[:, 0]]
    flat = to_device(torch.cat([host[:2].reshape(-1), keep[:, 0] * width + keep[:, 1], target, owner]), device)
    inp, mask, keep, target, owner = flat.split([n * width, n * width, len(target), len(target), len(target)])
    return inp.view(n, width), mask.view(n, width), keep, target, owner


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
        """One epoch of batches (`Batch`); labels are -100 on prompt tokens a spec puts no loss on.

        Sequences are sorted by length, cut into batches of ``batch_size``, and the batch order is
        shuffled: a long passage is not padded against short edit items (padding is compute
        thrown away).
        """
        order = sorted(range(len(ids)), key=lambda j: (len(ids[j]), j))
        groups = [order[i:i + train.batch_size] for i in range(0, len(order), train.batch_size)]
        rng.shuffle(groups)
        for group in groups:
            yield Batch(tuple(tuple(ids[j]) for j in group), tuple(tuple(labels[j]) for j in group))

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
                    epoch, batch = r.next
                    if epoch != r.epoch:
                        r.epoch, r.epoch_losses = epoch, []
                    if r.steps == 0:
                        r.first = loss
                    r.steps += 1
                    r.real += batch.real
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
        rows fall in. A pass is built on the host and sent in one copy (`_pass_tensors`); losses are
        read back once, as the step's result: on a GPU that is the step's only wait for the device."""
        import torch

        batches = [r.next[1] for r in live]
        counts = to_device(torch.tensor([max(1, b.labelled) for b in batches], dtype=torch.float32), self.device)
        sums = torch.zeros(len(live), dtype=torch.float32, device=self.device)
        for rows in _passes([[len(x) for x in b.ids] for b in batches], self.cfg.train.pass_tokens):
            if not any(y != -100 for _, g, j in rows for y in batches[g].labels[j][1:]):
                continue  # nothing to learn in this pass: no forward at all
            inp, mask, keep, target, owner = _pass_tensors(batches, rows, self.tok.pad_token_id, self.device)
            with self.bank.route([live[g].slot for _, g, _ in rows]), self.autocast():
                part = self._pass_loss(inp, mask, keep, target, owner, len(live))  # no KV cache: never read back
            with self.bank.quiet_backward():
                (part / counts).sum().backward()
            sums += part.detach()
        self.opt.step({r.slot: r.lr for r in live}, self.cfg.train.weight_decay)
        self.bank.zero_grad([r.slot for r in live])
        return (sums / counts).tolist()

    def _pass_loss(self, inp, mask, keep, target, owner, n: int):
        """(n,) summed next-token loss of each of n adaptations over a pass's labelled tokens:
        ``keep`` (labelled,) are their positions in the flattened (rows, width) hidden states,
        ``target`` the tokens that follow them, ``owner`` the adaptation of each."""
        import torch

        decoder = getattr(self.model, self.model.base_model_prefix)
        hidden = decoder(input_ids=inp, attention_mask=mask, use_cache=False).last_hidden_state  # (rows, width, d)
        tokens = token_losses(self.model, hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep), target)
        return torch.zeros(n, dtype=tokens.dtype, device=tokens.device).index_add(0, owner, tokens)

    def loss_sums(self, inp, mask, lab, group, n: int):
        """(n,) summed next-token loss of each group of rows over its labelled tokens, from device
        tensors (a test's way in; the loop builds its passes on the host); ``group`` (rows,) says
        which of the n groups a row belongs to. Divided by a group's labelled tokens it is HF's
        ``model(labels=...).loss``, computed without the logits of unlabelled positions."""
        width = lab.shape[1]
        target = lab[:, 1:]
        keep = (target != -100).nonzero()  # (labelled, 2): row, position
        return self._pass_loss(inp, mask, keep[:, 0] * width + keep[:, 1], target[keep[:, 0], keep[:, 1]],
                               group[keep[:, 0]], n)

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
