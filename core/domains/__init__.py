"""Domains: everything that differs between SEAL's tasks, behind one small module interface.

A domain module provides:

- ``NAME``; ``REFERENCE``: the two reference conditions every student is scored under once
  (unadapted, and the domain's fixed recipe: 'passage' or 'default_ttt'); ``DEFAULT_PROMPT``: the
  teacher template that fits it; ``DECODE``: a `spec.Decode`.
- ``load(data) -> list[context]`` for a `core.config.DataConfig` (callers use
  `load_data`, which adds the checks every domain shares); every context has
  ``context_id`` and ``title``. ``to_json(ctx)`` / ``from_json(raw)``: contexts travel in job payloads.
- ``prompt_fields(ctx) -> (title, text)``: what the teacher's template gets as {title} and {context}.
- ``edit_choices() -> list[str] | None``: every valid edit text where the domain's edits form a
  finite set (ARC's JSON choices), else None; ``teacher.generation.constrain`` samples among them.
- ``train_spec(ctx, edit, condition, student_cfg) -> spec.TrainSpec``: the training an edit asks for
  (``edit`` is the teacher's text; the reference conditions pass "").
- ``queries(ctx, student_cfg) -> list[spec.Query]`` and ``score(ctx, queries, answers, grade)
  -> list[QuestionVerdict]``: prediction and the evaluation tau, with the context removed where the
  domain requires it.

``student_cfg`` is a `student.config.StudentConfig`, read by attribute (this layer does not import
the student). A third domain is one more module and one more entry in ``DOMAINS``.
"""

from __future__ import annotations

from core.arc.grids import ArcDataError
from core.config import ConfigError, DataConfig
from core.contexts import ContextDataError, refuse_duplicates
from core.domains import arc, knowledge

DOMAINS = {"knowledge": knowledge, "arc": arc}


def get(name: str):
    if name not in DOMAINS:
        raise ConfigError(f"data.domain={name!r} is unknown; use one of {sorted(DOMAINS)}")
    return DOMAINS[name]


def load_data(data: DataConfig, key: str = "data") -> list:
    """The contexts ``data`` names, loaded by its domain. An empty selection and repeated contexts
    are refused: each context is scored once, keyed by its id."""
    data.check(key)
    try:
        out = get(data.domain).load(data)
    except (ContextDataError, ArcDataError) as e:  # a file's fault: name the key that points at it
        raise type(e)(f"{key}.source: {e}") from e
    if data.ids:
        by_id = {c.context_id: c for c in out} | {c.title: c for c in out if data.domain == "arc"}
        missing = [i for i in data.ids if i not in by_id]
        if missing:
            raise ConfigError(f"{key}.ids: {missing} are not among the {len(out)} contexts of "
                              f"{key}.source={data.source} (after offset/limit); check the ids or widen the slice")
        out = [by_id[i] for i in data.ids]
    if not out:
        limit = "null" if data.limit is None else data.limit
        raise ConfigError(f"{key}.source={data.source} with {key}.offset={data.offset}, {key}.limit={limit} "
                          f"selects no contexts; point {key}.source at a non-empty file, or lower "
                          f"{key}.offset / raise {key}.limit")
    refuse_duplicates(out, f"{key}.source={data.source}")
    return out
