"""K LoRA adapters on one frozen model, in plain torch: each batch row goes through its own adapter.

A ReST^EM round is hundreds of independent adaptations of the same frozen student, each too small
to keep the hardware busy. `LoraBank` stacks K adapters on every target linear (A: [K, r, in],
B: [K, out, r]) and hooks them onto the base model, so one forward runs the base's matmuls once over
every adaptation's rows and adds each row's own delta ``scale * B[k] @ A[k] @ x``. Which slot a row
uses is set once per forward or generate call (`LoraBank.route`); slot -1 is the bare base model.

Departures from PEFT, on purpose:
- Forward hooks on the base's own ``nn.Linear`` modules, not wrapper modules: the model's modules,
  names and state dict stay those of the checkpoint, and `merge` is one in-place add.
- Every slot's weights live in one fp32 tensor ``flat`` [K, total] (slot-major), and each layer's A
  and B are leaf views of it whose ``.grad`` are views of ``grad`` [K, total]. Autograd accumulates
  into those views in place, so `SlotAdamW` updates all adapters in a handful of whole-tensor ops
  per step instead of several per tensor (7 x 30 x 2 tensors per slot for smollm2-135m).
- Rows of several slots go through batched matmuls in one of three layouts, whichever measured
  fastest for the shape (`_Plan`): no copy when the rows come slot by slot in equal numbers, a
  matmul per run of rows sharing a slot for other long rows (on the CPU), padded slot blocks for
  short ones (and on a GPU, for all others: a constant number of kernels whatever K is).
- Nothing on the way reads the device: routing plans are built on the host once per make-up of a
  batch (`LoraBank.route`), and what goes to a GPU goes in pinned, asynchronous copies (`to_device`).

Initialisation is PEFT's (``reset_lora_parameters(adapter, True)``: A ~ kaiming_uniform(a=sqrt(5)),
B = 0, layer by layer in ``model.modules()`` order after ``torch.manual_seed(seed)``), drawn from a
private CPU generator so it never reads or moves the global RNG, and is the same on every device.
PEFT stays the saved format: `LoraBank.peft_state` holds PEFT's key names (see `Student.export_peft`).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass


def to_device(t, device):
    """Host tensor ``t`` on ``device``, without waiting for the device: on a GPU it is pinned and
    copied asynchronously (a copy from pageable memory waits for every kernel queued before it: a
    host sync per copy, which made each small index and scalar tensor a stall)."""
    import torch

    if torch.device(device).type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def target_linears(model, target_modules: list[str]) -> list[tuple[str, object]]:
    """(module path, nn.Linear) of every linear whose name is, or ends with '.' + , one of
    ``target_modules``, in ``model.named_modules()`` order (PEFT's rule for a list, and its order)."""
    import torch

    out = [(name, m) for name, m in model.named_modules()
           if isinstance(m, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in target_modules)]
    if not out:
        raise ValueError(f"student.lora.target_modules={list(target_modules)} matches no linear layer of the model; "
                         f"use names such as q_proj, v_proj (see model.named_modules())")
    return out


class LoraBank:
    """``slots`` LoRA adapters of rank ``r`` on the target linears of ``model`` (hooked in place).

    ``A[i]`` [slots, r, in_i] and ``B[i]`` [slots, out_i, r] are layer i's adapters (fp32 views of
    ``flat`` [slots, total]); ``grad`` [slots, total] holds their gradients. Call `close` to unhook.
    """

    def __init__(self, model, slots: int, r: int, alpha: float, dropout: float, target_modules: list[str]):
        import torch

        self.slots, self.r, self.scale, self.dropout = slots, r, alpha / r, dropout
        self.layers = target_linears(model, target_modules)
        device = self.layers[0][1].weight.device
        sizes = [(m.in_features, m.out_features) for _, m in self.layers]
        total = sum(r * (i + o) for i, o in sizes)
        self.flat = torch.zeros(slots, total, dtype=torch.float32, device=device)
        self.grad = torch.zeros_like(self.flat)
        self.A, self.B = [], []
        off = 0
        for i, o in sizes:
            for shape, out in (((r, i), self.A), ((o, r), self.B)):
                n = shape[0] * shape[1]
                leaf = self.flat[:, off:off + n].view(slots, *shape).detach().requires_grad_()
                leaf.grad = self.grad[:, off:off + n].view(slots, *shape)
                out.append(leaf)
                off += n
        self._plan: _Plan | None = None  # set by `route`
        self._plans: dict[tuple[int, ...], _Plan] = {}  # built once per routing of a batch's rows
        # long rows in any order: a matmul per run of rows on the CPU (measured fastest there), but
        # padded slot blocks on a GPU, where a fused step over K adapters would otherwise launch 2K
        # small matmuls (and as many autograd nodes) per layer: launches, not FLOPs, are its cost
        self.runs_for_long_rows = device.type == "cpu"
        self._hooks = [m.register_forward_hook(self._hook(j)) for j, (_, m) in enumerate(self.layers)]

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # ----- routing rows to slots ------------------------------------------------------------
    @contextmanager
    def route(self, rows: list[int]):
        """Within the block, batch row n goes through slot ``rows[n]`` (-1: no adapter); see `_Plan`."""
        if any(not -1 <= s < self.slots for s in rows):
            raise ValueError(f"rows name slots {sorted(set(rows))}; this bank has slots 0..{self.slots - 1} (and -1)")
        key = tuple(rows)
        if key not in self._plans:
            if len(self._plans) >= 4096:  # bounded: answering routes batches of any make-up
                self._plans.clear()
            self._plans[key] = _Plan.of(rows, self.flat.device) if any(s >= 0 for s in rows) else None
        old, self._plan = self._plan, self._plans[key]
        try:
            yield
        finally:
            self._plan = old

    def _hook(self, j: int):
        import torch
        import torch.nn.functional as F

        def hook(module, args, out):
            plan = self._plan
            if plan is None:
                return None
            x = args[0]
            if x.dim() != 3 or x.shape[0] != plan.rows:
                raise RuntimeError(f"LoRA rows were routed for a batch of {plan.rows}, but {self.layers[j][0]} got "
                                   f"input {tuple(x.shape)}; set LoraBank.route for the batch being run")
            if self.dropout:
                x = F.dropout(x, self.dropout, training=module.training)
            A, B = self.A[j], self.B[j]
            # deltas are added to the base output in place (the base matmul's backward does not
            # read its output), scaled by the add: no extra full-size temporaries
            if plan.slot is not None:  # one slot: plain matmuls, as PEFT computes them
                return out.add_(F.linear(F.linear(x, A[plan.slot]), B[plan.slot]), alpha=self.scale)
            n, t, d = x.shape
            if plan.src is None:  # one block of rows per slot, no copy: [slots, m * t, in]
                h = x.reshape(len(plan.used), plan.m * t, d) @ A[plan.sel].transpose(1, 2)
                return out.add_((h @ B[plan.sel].transpose(1, 2)).view(n, t, -1), alpha=self.scale)
            if t > self.r and self.runs_for_long_rows:  # a matmul per run of consecutive rows with one slot
                parts = [F.linear(F.linear(xs, A[s]), B[s]) if s >= 0 else out.new_zeros(len(xs), t, out.shape[-1])
                         for xs, s in zip(x.split(plan.sizes), plan.segments)]
                return out.add_(torch.cat(parts), alpha=self.scale)
            # short rows (decoding), or any rows on a GPU: copied into blocks padded to the largest
            # slot's row count
            blocks = x.new_zeros(len(plan.used) * plan.m, t, d).index_copy(0, plan.dest, x[plan.src])
            h = blocks.view(len(plan.used), plan.m * t, d) @ A[plan.sel].transpose(1, 2)
            delta = (h @ B[plan.sel].transpose(1, 2)).view(len(plan.used) * plan.m, t, -1)
            return out.index_add_(0, plan.src, delta[plan.dest], alpha=self.scale)

        return hook

    # ----- per-slot weights -------------------------------------------------------------------
    def reset(self, slot: int, seed: int) -> None:
        """PEFT's fresh adapter in ``slot``: A ~ kaiming_uniform(a=sqrt(5)), B = 0, layer by layer,
        drawn from a private generator seeded with ``seed`` (the stream ``torch.manual_seed(seed)``
        gives the global CPU generator)."""
        import torch

        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for A, B in zip(self.A, self.B):
                a = torch.empty(A.shape[1:], dtype=torch.float32)
                torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)
                A[slot].copy_(a)
                B[slot].zero_()

    def zero_grad(self, slots: list[int]) -> None:
        for a, b in _runs(slots):
            self.grad[a:b].zero_()

    def merge(self, slot: int) -> None:
        """Fold ``slot`` into the base weights: W += scale * B @ A (computed in fp32, rounded once to
        W's dtype). The slot itself is left as it is; route no rows to it afterwards."""
        import torch

        with torch.no_grad():
            for (_, m), A, B in zip(self.layers, self.A, self.B):
                m.weight.add_((B[slot] @ A[slot]) * self.scale)

    def peft_state(self, slot: int) -> dict:
        """Slot ``slot`` under PEFT's saved key names (``base_model.model.<path>.lora_A.weight``), on the CPU."""
        out = {}
        for (name, _), A, B in zip(self.layers, self.A, self.B):
            out[f"base_model.model.{name}.lora_A.weight"] = A[slot].detach().cpu().clone()
            out[f"base_model.model.{name}.lora_B.weight"] = B[slot].detach().cpu().clone()
        return out

    @contextmanager
    def quiet_backward(self):
        """The leaves are strided views of ``flat``; autograd warns that their in-place-accumulated
        grads break its layout contract, which is exactly what is meant here."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
            yield


@dataclass(frozen=True)
class _Plan:
    """How the rows of one batch reach their slots; built once per make-up of a batch (`LoraBank.route`).

    Four layouts, by what measured fastest (smollm2-135m decoder, fp32, 2-core dev CPU, forward +
    backward real tokens/s; K = 8 slots; on a GPU the third gives way to the fourth):
    - one slot for every row: plain matmuls (``slot``);
    - rows slot by slot, equal counts (a fused training step of full batches): a reshape to
      [slots, m * tokens, in] and two batched matmuls, no copy (``src`` None): 443 tok/s on 8 x 4
      rows, against 361 for gathering each row's A and B;
    - any other order, rows longer than the rank (training passes, prefill): two matmuls per run of
      consecutive rows that share a slot (``segments``, ``sizes``), the runs' deltas joined once;
    - any other order, short rows (decoding one token per row): rows copied into blocks padded to
      the largest slot's row count (``dest``): 589 tok/s against 306 for a per-row gather, which
      copies every row's weights at every step.
    """

    rows: int
    slot: int | None  # the one slot every row uses, else None
    used: tuple[int, ...] = ()  # slots in use, sorted
    sel: object = None  # slice (consecutive slots: a view) or index tensor of ``used``
    m: int = 0  # rows of the slot with the most rows
    src: object = None  # (real rows,) row numbers of the rows with a slot; None: the reshape layout
    dest: object = None  # (real rows,) their place in the padded blocks [slots * m]
    segments: tuple[int, ...] = ()  # the slot (or -1) of each run of consecutive rows with one slot
    sizes: tuple[int, ...] = ()  # the runs' row counts

    @staticmethod
    def of(rows: list[int], device) -> _Plan:
        import torch

        used = tuple(sorted({s for s in rows if s >= 0}))
        if len(used) == 1 and min(rows) >= 0:
            return _Plan(len(rows), used[0])
        count = {s: rows.count(s) for s in used}
        m, pos, seen = max(count.values()), {s: p for p, s in enumerate(used)}, dict.fromkeys(used, 0)
        src, dest = [], []
        for n, s in enumerate(rows):
            if s >= 0:
                src.append(n)
                dest.append(pos[s] * m + seen[s])
                seen[s] += 1
        sel = (slice(used[0], used[-1] + 1) if used[-1] - used[0] == len(used) - 1
               else to_device(torch.tensor(used), device))
        if len(rows) == len(used) * m and dest == list(range(len(rows))):
            return _Plan(len(rows), None, used, sel, m)
        segments, sizes = [], []
        for s in rows:
            if segments and segments[-1] == s:
                sizes[-1] += 1
            else:
                segments.append(s)
                sizes.append(1)
        src, dest = to_device(torch.tensor([src, dest]), device)
        return _Plan(len(rows), None, used, sel, m, src, dest, tuple(segments), tuple(sizes))


def _runs(slots: list[int]) -> list[tuple[int, int]]:
    """Sorted slots as half-open ranges of consecutive slots: [0, 1, 2, 5] -> [(0, 3), (5, 6)]."""
    out: list[tuple[int, int]] = []
    for s in sorted(slots):
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], s + 1)
        else:
            out.append((s, s + 1))
    return out


class SlotAdamW:
    """AdamW over the rows (slots) of one parameter tensor [K, n], each slot with its own learning
    rate and step count; a step updates only the slots it names, so a finished adaptation's weights
    and state never change again.

    Elementwise it is torch's single-tensor AdamW, op for op (decoupled decay ``p *= 1 - lr*wd``,
    ``m.lerp_(g, 1 - b1)``, ``v = v*b2 + (1 - b2) g^2``, ``denom = sqrt(v)/sqrt(bc2) + eps``,
    ``p -= lr/bc1 * m / denom``), with the per-slot scalars computed in double as torch does and
    applied as [slots, 1] columns. The slots a step names are updated as views of consecutive runs,
    never copied, and on the CPU ``chunk`` elements at a time: the temporaries of whole rows (sqrt(v),
    m / denom: K x 4.9M floats for smollm2 at r=16) go through memory, those of 128k-element chunks
    stay in cache. K=8, smollm2 shapes, 2-core dev CPU, per step: whole rows 152 ms, 128k-element
    chunks 68 ms, torch's own AdamW over the same weights as 3,360 tensors 177 ms (foreach 192 ms).
    """

    def __init__(self, param, grad, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 chunk: int | None = None):
        import torch

        self.param, self.grad, self.betas, self.eps = param, grad, betas, eps
        self.m, self.v = torch.zeros_like(param), torch.zeros_like(param)
        self.steps = [0] * param.shape[0]
        # elements per chunk: cache-sized on the CPU; a GPU streams whole rows (one launch per op)
        self.chunk = chunk or ((1 << 17) if param.device.type == "cpu" else param.numel())

    def reset(self, slot: int) -> None:
        self.m[slot].zero_()
        self.v[slot].zero_()
        self.steps[slot] = 0

    def step(self, lrs: dict[int, float], weight_decay: float = 0.0) -> None:
        """One step of the slots in ``lrs`` (slot -> learning rate)."""
        import torch

        b1, b2 = self.betas
        for s in lrs:
            self.steps[s] += 1

        with torch.no_grad():
            for a, b in _runs(list(lrs)):
                lr, step = [lrs[s] for s in range(a, b)], self.steps[a:b]
                # the per-slot scalars, in double as torch computes them, sent in one copy: [3, slots, 1]
                decay, neg_step, bc2_sqrt = to_device(torch.tensor(
                    [[1 - x * weight_decay for x in lr], [-(x / (1 - b1 ** t)) for x, t in zip(lr, step)],
                     [(1 - b2 ** t) ** 0.5 for t in step]], dtype=torch.float64).to(self.param.dtype),
                    self.param.device)[:, :, None]
                width = max(1, self.chunk // (b - a))
                for c in range(0, self.param.shape[1], width):
                    cols = slice(c, c + width)
                    p, g, m, v = (x[a:b, cols] for x in (self.param, self.grad, self.m, self.v))
                    if weight_decay != 0:
                        p.mul_(decay)
                    m.lerp_(g, 1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    denom = v.sqrt().div_(bc2_sqrt).add_(self.eps)
                    p.add_((neg_step * m).div_(denom))  # addcdiv's order: (value * m) / denom, then added
