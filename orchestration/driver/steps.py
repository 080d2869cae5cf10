"""What the commands that have a teacher write edits share: the edit slot, and one way to chunk
and seed the writing.

`seal train`, `seal evaluate`, `seal generate` and `seal continual` all go through `write_edits`.
Its seeds depend only on *what* is generated, never on list positions or global state, so an
interrupted run resumes into exactly the edits an uninterrupted one writes:
- chunks are cut from the *full* list of wanted slots, never from the missing ones; a chunk with
  any slot missing is regenerated whole, with the same prompts in the same batches;
- a chunk's seed is hashed from the base seed and the chunk's first edit id (ids name the round or
  version, the context and the sample, so they are stable across resumes);
- the backend samples from private generators seeded from it (`teacher.generate`), not from
  torch's global RNG, which SFT and adapter init reseed in other threads (`async_rounds`).
A chunk is handed to ``save`` in one call, which writes it all at once.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from orchestration.core.contexts import Context
from orchestration.core.faults import fault


class Slot(NamedTuple):
    """One edit a command wants: its stable id, its context, what it is for, its sample index."""

    edit_id: str
    context: Context
    purpose: str  # 'train' or 'heldout' (seal train/evaluate); 'generate' (seal generate/continual)
    sample: int


def plan_chunks(slots: list[Slot], batch_size: int) -> list[list[Slot]]:
    """``slots`` cut into chunks of whole contexts, one purpose per chunk (in order of first
    appearance), each about ``batch_size`` sequences (contexts x samples per context)."""
    out = []
    for purpose in dict.fromkeys(s.purpose for s in slots):
        mine = [s for s in slots if s.purpose == purpose]
        ids = list(dict.fromkeys(s.context.context_id for s in mine))
        per = max(1, batch_size // (max(s.sample for s in mine) + 1))
        for start in range(0, len(ids), per):
            keep = set(ids[start:start + per])
            out.append([s for s in mine if s.context.context_id in keep])
    return out


def chunk_seed(seed: int, chunk: list[Slot]) -> int:
    """The generate seed of a chunk: hashed from the base seed and its first edit id."""
    from teacher.backend import batch_seed

    return batch_seed(seed, chunk[0].edit_id)


def write_edits(backend, teacher, domain, slots: list[Slot], have, save: Callable, *,
                greedy: Callable[[str], bool], choices: list[str] | None = None) -> None:
    """Generate every chunk of ``slots`` that has a slot whose id is not in ``have``.

    ``backend``: a generation backend (`teacher.generate.TransformersBackend` interface); ``teacher``:
    the TeacherConfig (prompt, templates, generation settings); ``domain``: renders the prompt
    fields; ``greedy(purpose)``: greedy decoding for that purpose (n must then be 1). Each generated
    chunk goes to ``save(rows, sampling)`` with rows = [(slot, prompt, Generation)] for every slot
    of the chunk, and sampling = the settings and seed it was generated with.
    """
    from teacher.prompts import render

    g = teacher.generation
    for chunk in plan_chunks(slots, g.batch_size):
        if all(s.edit_id in have for s in chunk):
            continue
        ctxs = list({s.context.context_id: s.context for s in chunk}.values())
        prompts = [render(teacher.prompt, teacher.templates, *domain.prompt_fields(c), backend.tokenizer, backend.chat)
                   for c in ctxs]
        greedy_ = greedy(chunk[0].purpose)
        seed = chunk_seed(g.seed, chunk)
        outs = backend.generate(prompts, max(s.sample for s in chunk) + 1, greedy=greedy_, seed=seed, choices=choices)
        fault("generate")
        by_ctx = {c.context_id: (p, o) for c, p, o in zip(ctxs, prompts, outs)}
        sampling = {"greedy": greedy_, "temperature": g.temperature, "top_p": g.top_p,
                    "max_new_tokens": g.max_new_tokens, "seed": seed, "constrain": g.constrain}
        save([(s, by_ctx[s.context.context_id][0], by_ctx[s.context.context_id][1][s.sample]) for s in chunk],
             sampling)


def grouped(jobs: list, size: int) -> list:
    """``jobs`` (queue `Job`s) with fixed groups: each student's jobs (one queue kind each), in key
    order, cut into groups of up to ``size``, which a worker leases, runs together (K adaptations
    in one pass) and acks together. Fixed by the driver, so a job always runs with the same
    companions, whichever worker takes it and however often: results never depend on timing."""
    from dataclasses import replace

    out = {j.key: j for j in jobs}
    for kind in dict.fromkeys(j.kind for j in jobs):
        keys = sorted(j.key for j in jobs if j.kind == kind)
        for start in range(0, len(keys), size):
            members = keys[start:start + size]
            for key in members:
                out[key] = replace(out[key], group=f"{members[0]}+{len(members)}")
    return [out[j.key] for j in jobs]
