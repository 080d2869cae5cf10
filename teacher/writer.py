"""The edit writer: the edits a command wants, written in fixed, seeded chunks, and the checks a
teacher's prompts pass before any work.

`seal train`, `seal evaluate`, `seal generate` and `seal continual` all go through `write_edits`.
Its seeds depend only on *what* is generated, never on list positions or global state, so an
interrupted run resumes into exactly the edits an uninterrupted one writes:
- chunks are cut from the *full* list of wanted edits, never from the missing ones; a chunk with
  any edit missing is regenerated whole, with the same prompts in the same batches;
- a chunk's seed is hashed from the base seed and the chunk's first edit id (ids name the round or
  version, the context and the sample, so they are stable across resumes);
- the backend samples from private generators seeded from it (`teacher.transformers_backend`), not from
  torch's global RNG, which SFT and adapter init reseed in other threads (`async_rounds`).
A chunk is handed to ``save`` in one call, which writes it all at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

from core import domains
from core.config import ConfigError, at
from core.contexts import Context
from core.faults import fault
from core.records import Purpose, SelfEdit
from core.runs import append_jsonl
from teacher.config import TeacherConfig


class WantedEdit(NamedTuple):
    """One edit a command wants: its stable id, its context, what it is for, its sample index."""

    edit_id: str
    context: Context
    purpose: Purpose
    sample: int
    template: str | None = None  # the template it is written under (teacher.explore); None: teacher.prompt


def plan_chunks(wanted: list[WantedEdit], batch_size: int) -> list[list[WantedEdit]]:
    """``wanted`` cut into chunks of whole contexts, one purpose per chunk (in order of first
    appearance), each about ``batch_size`` sequences (contexts x samples per context)."""
    out = []
    for purpose in dict.fromkeys(w.purpose for w in wanted):
        mine = [w for w in wanted if w.purpose == purpose]
        ids = list(dict.fromkeys(w.context.context_id for w in mine))
        per = max(1, batch_size // (max(w.sample for w in mine) + 1))
        for start in range(0, len(ids), per):
            keep = set(ids[start:start + per])
            out.append([w for w in mine if w.context.context_id in keep])
    return out


def chunk_seed(seed: int, chunk: list[WantedEdit]) -> int:
    """The generate seed of a chunk: hashed from the base seed and its first edit id."""
    from teacher.backend import batch_seed

    return batch_seed(seed, chunk[0].edit_id)


def write_edits(backend, teacher: TeacherConfig, domain, wanted: list[WantedEdit], have, save: Callable, *,
                greedy: Callable[[str], bool], choices: list[str] | None = None) -> None:
    """Generate every chunk of ``wanted`` that has an edit whose id is not in ``have``.

    ``backend``: a generation backend (`teacher.backend.Backend`); ``teacher``: the prompt, templates
    and generation settings; ``domain``: renders the prompt fields; ``greedy(purpose)``: greedy
    decoding for that purpose (n must then be 1). Each generated chunk goes to ``save(rows,
    sampling)`` with rows = [(wanted edit, prompt, Generation)] for every edit of the chunk, and
    sampling = the settings and seed it was generated with.
    """
    from core.console import Progress
    from teacher.prompts import render

    g = teacher.generation
    for chunk in Progress(len(wanted), "teacher writes edits", "edit").over(plan_chunks(wanted, g.batch_size), len):
        if all(w.edit_id in have for w in chunk):
            continue
        # one prompt per (context, template); an edit takes the j-th sample of its prompt, j its rank
        # among the chunk's edits of that prompt (one template: j is the edit's own sample index)
        units: dict[tuple[str, str], list[WantedEdit]] = {}
        for w in chunk:  # contexts in order, each context's samples in order (`plan_chunks`)
            units.setdefault((w.context.context_id, w.template or teacher.prompt), []).append(w)
        ctx_of = {w.context.context_id: w.context for w in chunk}
        keys = list(units)
        prompts = [render(t, teacher.templates, *domain.prompt_fields(ctx_of[c]), backend.tokenizer, backend.chat)
                   for c, t in keys]
        greedy_ = greedy(chunk[0].purpose)
        seed = chunk_seed(g.seed, chunk)
        outs = backend.generate(prompts, max(map(len, units.values())), greedy=greedy_, seed=seed, choices=choices)
        fault("generate")
        got = {w.edit_id: (p, o[j]) for u, p, o in zip(keys, prompts, outs) for j, w in enumerate(units[u])}
        sampling = {"greedy": greedy_, "temperature": g.temperature, "top_p": g.top_p,
                    "max_new_tokens": g.max_new_tokens, "seed": seed, "constrain": g.constrain}
        save([(w, *got[w.edit_id]) for w in chunk], sampling)


def write_run_edits(backend, teacher: TeacherConfig, domain_name: str, run: Path, r: int, version: int,
                    wanted: list[WantedEdit], edits: dict[str, SelfEdit], *, sampled_heldout: bool) -> None:
    """Write the missing edits of ``wanted`` (teacher version ``version``, round ``r``) to the run's
    edits.jsonl and to ``edits`` (`write_edits`: fixed chunks seeded by their ids; each chunk appended
    in one write, so a crash loses at most the chunk in progress, and its resume regenerates the same
    chunk). Held-out edits are greedy unless ``sampled_heldout``. An edit sampled under an explored
    template also stores the canonical prompt it is trained under."""
    from teacher.prompts import render

    domain = domains.get(domain_name)

    def canonical(w: WantedEdit) -> str | None:
        """The canonical prompt of an edit written under an explored template (None: its own)."""
        if w.template in (None, teacher.prompt):
            return None
        return render(teacher.prompt, teacher.templates, *domain.prompt_fields(w.context), backend.tokenizer,
                      backend.chat)

    def save(rows, sampling):
        new = [SelfEdit(edit_id=w.edit_id, context_id=w.context.context_id, teacher_version=version, round=r,
                        purpose=w.purpose, sample=w.sample, template=w.template or teacher.prompt,
                        chat=backend.chat, prompt=prompt, text=g.text, n_tokens=g.n_tokens, finished=g.finished,
                        sampling=sampling, sft_prompt=canonical(w))
               for w, prompt, g in rows if w.edit_id not in edits]
        append_jsonl(run / "edits.jsonl", "\n".join(e.to_json() for e in new))
        edits.update((e.edit_id, e) for e in new)

    write_edits(backend, teacher, domain, wanted, edits, save,
                greedy=lambda purpose: purpose == Purpose.heldout and not sampled_heldout,
                choices=domain.edit_choices() if teacher.generation.constrain else None)


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
