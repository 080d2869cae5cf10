"""The gold answer's log-likelihood: a dense, low-variance read-out of what an adapter taught.

Greedy-answer F1 on a handful of questions is mostly 0 or tied; the mean per-token log-probability
of the gold answer, teacher-forced right after the student's own answer prompt (the passage not in
it), moves with every bit the adapter learned. For question-style domains (knowledge) only: the
answer is ``gold`` as the student would write it after its prompt (a leading space after a plain
``Answer:`` prompt, none after a chat model's assistant turn).
"""

from __future__ import annotations

from core.domains.spec import Query


def answer_tokens(student, query: Query) -> tuple[list[int], list[int]]:
    """(prompt ids, gold answer ids) of one question, as `Student.answer` prompts it."""
    tok = student.tok
    prompt = tok(student.prompt(query.text), add_special_tokens=not student.chat)["input_ids"]
    gold = tok(("" if student.chat else " ") + query.gold.strip(), add_special_tokens=False)["input_ids"]
    return prompt, gold


def loglik_many(student, queries: list[list[Query]], adapters: list[int] | None = None) -> list[list[float]]:
    """``queries[i]``'s gold answers scored through slot ``adapters[i]`` (default: slot i; -1: the
    base model): for each question, the mean over the gold answer's tokens of log p(token | prompt,
    the gold tokens before it); None for an empty gold answer. Batched like answering: up to ``answer.batch_size`` rows per slot
    in a forward pass, right-padded, each row through its own adapter."""
    import torch

    from student.head_loss import token_losses

    adapters = list(range(len(queries))) if adapters is None else list(adapters)
    if len(adapters) != len(queries):
        raise ValueError(f"loglik_many got {len(queries)} query groups but {len(adapters)} adapters")
    rows = [(g, i, *answer_tokens(student, q)) for g, qs in enumerate(queries) for i, q in enumerate(qs)]
    out: list[list[float | None]] = [[None] * len(qs) for qs in queries]
    bs = student.cfg.answer.batch_size * max(1, len(set(adapters)))
    pad = student.tok.pad_token_id
    decoder = getattr(student.model, student.model.base_model_prefix)
    for at in range(0, len(rows), bs):
        part = rows[at:at + bs]
        width = max(len(p) + len(t) for *_, p, t in part)
        ids = torch.full((len(part), width), pad, dtype=torch.long)
        mask = torch.zeros((len(part), width), dtype=torch.long)
        target = torch.full((len(part), width), -100, dtype=torch.long)  # target[n, j]: the token after j
        for n, (_, _, p, t) in enumerate(part):
            seq = p + t
            ids[n, :len(seq)] = torch.tensor(seq)
            mask[n, :len(seq)] = 1
            target[n, len(p) - 1:len(seq) - 1] = torch.tensor(t)
        ids, mask, target = ids.to(student.device), mask.to(student.device), target.to(student.device)
        with torch.inference_mode(), student._autocast(), student._route([adapters[g] for g, *_ in part]):
            hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            keep = target != -100
            losses = token_losses(student.model, hidden[keep], target[keep])
        owner = torch.arange(len(part), device=losses.device)[:, None].expand_as(target)[keep]
        sums = torch.zeros(len(part), dtype=losses.dtype, device=losses.device).index_add(0, owner, losses)
        counts = torch.bincount(owner, minlength=len(part)).clamp(min=1)
        for (g, i, _, t), v in zip(part, (-sums / counts).tolist()):
            out[g][i] = v if t else None  # an empty gold answer has no tokens to score
    return out
