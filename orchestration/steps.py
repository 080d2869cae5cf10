"""What the commands with a teacher or a queue share: the edit slot and one way to chunk and seed
the writing of edits, the held-out evaluation settings, the checks of a teacher's prompts, who runs
the workers and the teacher, and the collection of results.

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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from core import domains
from core.config import ConfigError, at, check_min
from core.contexts import Context
from core.faults import fault
from core.models import trim_cpu_memory
from core.queue import Queue
from core.records import SelfEdit, StudentResult
from core.runs import append_jsonl
from teacher.config import TeacherConfig


class Slot(NamedTuple):
    """One edit a command wants: its stable id, its context, what it is for, its sample index."""

    edit_id: str
    context: Context
    purpose: str  # 'train' or 'heldout' (seal train/evaluate); 'generate' (seal generate/continual)
    sample: int
    template: str | None = None  # the template it is written under (teacher.explore); None: teacher.prompt


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

    ``backend``: a generation backend (`teacher.backend.Backend`); ``teacher``:
    the TeacherConfig (prompt, templates, generation settings); ``domain``: renders the prompt
    fields; ``greedy(purpose)``: greedy decoding for that purpose (n must then be 1). Each generated
    chunk goes to ``save(rows, sampling)`` with rows = [(slot, prompt, Generation)] for every slot
    of the chunk, and sampling = the settings and seed it was generated with.
    """
    from core.console import Progress
    from teacher.prompts import render

    g = teacher.generation
    for chunk in Progress(len(slots), "teacher writes edits", "edit").over(plan_chunks(slots, g.batch_size), len):
        if all(s.edit_id in have for s in chunk):
            continue
        # one prompt per (context, template); a slot takes the j-th sample of its prompt, j its rank
        # among the chunk's slots of that prompt (one template: j is the slot's own sample index)
        units: dict[tuple[str, str], list[Slot]] = {}
        for s in chunk:  # contexts in order, each context's samples in order (`plan_chunks`)
            units.setdefault((s.context.context_id, s.template or teacher.prompt), []).append(s)
        ctx_of = {s.context.context_id: s.context for s in chunk}
        keys = list(units)
        prompts = [render(t, teacher.templates, *domain.prompt_fields(ctx_of[c]), backend.tokenizer, backend.chat)
                   for c, t in keys]
        greedy_ = greedy(chunk[0].purpose)
        seed = chunk_seed(g.seed, chunk)
        outs = backend.generate(prompts, max(map(len, units.values())), greedy=greedy_, seed=seed, choices=choices)
        fault("generate")
        got = {s.edit_id: (p, o[j]) for u, p, o in zip(keys, prompts, outs) for j, s in enumerate(units[u])}
        sampling = {"greedy": greedy_, "temperature": g.temperature, "top_p": g.top_p,
                    "max_new_tokens": g.max_new_tokens, "seed": seed, "constrain": g.constrain}
        save([(s, *got[s.edit_id]) for s in chunk], sampling)


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


# ----- the held-out evaluation settings (seal train, seal evaluate) ------------------------------
@dataclass
class EvalConfig:
    """Held-out evaluation of each teacher version."""

    sampled: bool = False
    """False: one greedy edit per held-out context. True: ``k`` sampled edits, reporting their mean."""
    k: int = 1
    """Edits per held-out context when ``sampled`` (1 or more)."""

    def check(self, key: str = "eval") -> None:
        check_min(self, key, 1, "k")


# ----- the teacher: checks, backend, edits -------------------------------------------------------
def check_constrain(teacher: TeacherConfig, domain: str, key: str = "") -> None:
    """Constrained decoding needs a domain whose edits form a finite set."""
    if teacher.generation.constrain and domains.get(domain).edit_choices() is None:
        raise ConfigError(f"{at(key, 'teacher.generation.constrain')}=true, but data.domain={domain!r} has "
                          f"free-text edits with no finite format to constrain to; set "
                          f"teacher.generation.constrain=false")


def check_prompts(teacher: TeacherConfig, domain: str, cache: str | None, key: str, selections: dict) -> None:
    """The teacher's prompt for every context of ``selections`` (data key -> contexts) is within
    ``teacher.max_prompt_tokens``; only the tokenizer is loaded. Shared by every command with a teacher."""
    from teacher.prompts import check_prompt_lengths, prompt_tokenizer

    tokenizer, chat = prompt_tokenizer(teacher, cache, key)
    for data_key, contexts in selections.items():
        check_prompt_lengths(teacher, contexts, domains.get(domain), tokenizer, chat, key, data_key)


def make_workers(cfg, run: Path):
    """Who runs the student workers of ``cfg``: Ray actors (launcher: ray), threads of this process
    (workers.mode: inline) or `seal worker` processes."""
    from orchestration.launch import InlineWorkers, ProcessWorkers

    if getattr(cfg, "launcher", "local") == "ray":
        from orchestration.ray_launch import RayWorkers

        return RayWorkers(cfg, run)
    if cfg.workers.mode == "inline":
        return InlineWorkers(cfg, run)
    return ProcessWorkers(cfg, run)


def teacher_backend(cfg, model: str):
    """The teacher's generation backend for ``model``: in this process, or a Ray actor (launcher: ray).
    Both implement `teacher.backend.Backend`."""
    if getattr(cfg, "launcher", "local") == "ray":
        from orchestration.ray_launch import RayTeacherBackend

        return RayTeacherBackend(cfg, model)
    from teacher.generate import make_backend

    return make_backend(model, cfg.teacher, cache=cfg.models_cache)


def generate_edits(cfg, run: Path, r: int, version: int, model: str, wanted: list[Slot],
                   edits: dict) -> None:
    """Write the missing edits of ``wanted`` to edits.jsonl (`write_edits`: fixed chunks,
    seeded by their ids; each chunk appended in one write, so a crash loses at most the chunk in
    progress, and its resume regenerates the same chunk)."""
    if all(w.edit_id in edits for w in wanted):
        return
    from teacher.prompts import render

    domain = domains.get(cfg.data.domain)
    backend = teacher_backend(cfg, model)

    def canonical(w: Slot) -> str | None:
        """The canonical prompt of an edit written under an explored template (None: its own)."""
        if w.template in (None, cfg.teacher.prompt):
            return None
        return render(cfg.teacher.prompt, cfg.teacher.templates, *domain.prompt_fields(w.context),
                      backend.tokenizer, backend.chat)

    def save(rows, sampling):
        new = [SelfEdit(edit_id=w.edit_id, context_id=w.context.context_id, teacher_version=version, round=r,
                        purpose=w.purpose, sample=w.sample, template=w.template or cfg.teacher.prompt,
                        chat=backend.chat, prompt=prompt, text=g.text, n_tokens=g.n_tokens, finished=g.finished,
                        sampling=sampling, sft_prompt=canonical(w))
               for w, prompt, g in rows if w.edit_id not in edits]
        append_jsonl(run / "edits.jsonl", "\n".join(e.to_json() for e in new))
        edits.update((e.edit_id, e) for e in new)

    try:
        write_edits(backend, cfg.teacher, domain, wanted, edits, save,
                    greedy=lambda purpose: purpose == "heldout" and not cfg.eval.sampled,
                    choices=domain.edit_choices() if cfg.teacher.generation.constrain else None)
    finally:
        backend.close()
        trim_cpu_memory()


# ----- the students' results -------------------------------------------------------------------------
def collect(q: Queue, keys: set[str], run: Path, exported: set[str]) -> dict[str, StudentResult]:
    """Results of ``keys`` from the queue; new ones are appended to results.jsonl."""
    out = {}
    for key, raw in q.results().items():
        if key in keys:
            out[key] = StudentResult.from_json(json.dumps(raw))
            if key not in exported:
                append_jsonl(run / "results.jsonl", out[key].to_json())
                exported.add(key)
                fault("result")
    return out

