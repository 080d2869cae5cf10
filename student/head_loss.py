"""Per-token cross-entropy from decoder hidden states, in chunks, with its gradient taken in the forward.

The LM head is frozen (only the LoRA adapters train, and none sits on the head), so a token's loss
depends on its own hidden state alone, through the head: d loss / d h = (softmax - onehot) @ W (times
the soft-cap's derivative, for gemma's). `token_losses` computes that row while the chunk's logits
exist, and keeps it (tokens x hidden, the size of the hidden states themselves) instead of the logits
(tokens x vocabulary); backward only scales it. So a step runs the head's matmul twice (logits, then
their gradient) and never holds more than one chunk of logits: gemma3's 262k-token vocabulary at
K = 16 would be 4 GB of fp32 logits. The version before ran each chunk under
``torch.utils.checkpoint`` and recomputed the logits in backward: three head matmuls, and at
smollm2-135m's shape, K = 8, the fused step 1.12x the PEFT step over the same rows
(bench/overhead.py, before this module).
"""

from __future__ import annotations

import functools

CHUNK_LOGITS = 1 << 26
"""Logits per chunk (64M: 256 MB in fp32)."""


def token_losses(model, hidden, targets, chunk_logits: int = CHUNK_LOGITS):
    """Cross-entropy of each token, (tokens,) fp32, from decoder hidden states (tokens, hidden) and
    next-token targets (tokens,), as the model's own forward computes logits (its head, then its
    ``final_logit_softcapping`` if it has one, as gemma's does), about ``chunk_logits`` logits at a
    time. Differentiable with respect to ``hidden`` (not the head's weight, which must be frozen).

    Tokens that fit in one chunk, or need no gradient, go through plain autograd, op for op the
    model's own loss (a chunk's logits are held either way); only more take the gradient-in-forward
    path of this module's docstring."""
    import torch
    import torch.nn.functional as F

    head = model.get_output_embeddings()
    if head.weight.requires_grad or head._forward_hooks:
        raise ValueError("token_losses needs the LM head frozen and without adapters; remove it from "
                         "student.lora.target_modules")
    cap = getattr(model.config, "final_logit_softcapping", None) or 0.0
    chunk = max(1, chunk_logits // head.weight.shape[0])
    if len(targets) > chunk and torch.is_grad_enabled() and hidden.requires_grad:
        return _head_loss().apply(hidden, targets, head, cap, chunk)
    parts = [F.cross_entropy(_logits(head, hidden[i:i + chunk], cap)[0].float(), targets[i:i + chunk],
                             reduction="none") for i in range(0, len(targets), chunk)]
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def _logits(head, h, cap: float):
    """(logits, tanh(logits / cap) or None), soft-capped as the model does it, in the head's dtype."""
    import torch

    z = head(h)
    if not cap:
        return z, None
    t = torch.tanh(z / cap)
    return t * cap, t


def _chunk(head, h, y, cap: float):
    """(losses (n,) fp32, their gradients with respect to h (n, hidden), in the logits' dtype)."""
    import torch

    z, t = _logits(head, h, cap)
    # the plain path's ops (cross_entropy of the fp32 logits is log_softmax, then the target's entry),
    # so the losses are its own; then the softmax in place of the log-probabilities
    logp = torch.log_softmax(z, -1, dtype=torch.float32)
    loss = -logp.gather(1, y[:, None])[:, 0]
    dz = logp.exp_()
    dz[torch.arange(len(y), device=y.device), y] -= 1
    if t is not None:
        dz.mul_(1 - t.float() * t.float())
    return loss, dz.to(z.dtype) @ head.weight.to(z.dtype)


@functools.cache
def _head_loss():
    """The ``torch.autograd.Function``, made on first use (this module imports without torch)."""
    import torch

    class HeadLoss(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, targets, head, cap, chunk):
            parts = [_chunk(head, hidden[i:i + chunk], targets[i:i + chunk], cap) for i in range(0, len(targets), chunk)]
            ctx.save_for_backward(torch.cat([g for _, g in parts]))
            ctx.dtype = hidden.dtype
            return torch.cat([loss for loss, _ in parts])

        @staticmethod
        def backward(ctx, grad_losses):
            (rows,) = ctx.saved_tensors
            return (rows * grad_losses[:, None].to(rows.dtype)).to(ctx.dtype), None, None, None, None

    return HeadLoss
