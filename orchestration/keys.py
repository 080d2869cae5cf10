"""Edit ids and job keys: the only code that builds or takes apart their strings.

A run folder stores them as strings (edits.jsonl, results.jsonl, the queue), and a resumed run
looks its work up by them, so the formats are fixed:

- edit ids (`EditId`): ``r{round}/{context}/{sample}`` (a training edit of `seal train`),
  ``v{version}/heldout/{context}/{sample}`` (a held-out edit of teacher version v),
  ``{context}/{sample}`` (`seal generate`), ``{context}`` (`seal continual`: one edit per context);
- job keys (`JobKey`): ``{subject}@{student model}``, the subject being an edit id (train and
  held-out edits) or a condition without an edit (`CondKey`): ``{condition}/{context}`` (base and
  the fixed recipe, once per context) or, in `seal evaluate`, ``s{seed}/{condition}/{contexts}``
  and ``s{seed}/{condition}/{contexts}/{sample}`` (``contexts`` joined by ``+`` with
  ``multi_passage``; ``sample``: the i-th edit of the teacher or the file).

Context ids are hashes or ARC task ids: they hold no ``/``, ``+`` or ``@``. A model may hold ``/``
(hub ids, folders), so a job key is split at its first ``@``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

_TRAIN = re.compile(r"r(\d+)/([^/@+]+)/(\d+)")
_HELDOUT = re.compile(r"v(\d+)/heldout/([^/@+]+)/(\d+)")
_GENERATE = re.compile(r"([^/@+]+)/(\d+)")
_CONTINUAL = re.compile(r"[^/@+]+")
_SEEDED = re.compile(r"s(\d+)/([^/@+]+)/([^/@]+?)(?:/(\d+))?")
_COND = re.compile(r"([^/@+]+)/([^/@+]+)")


@dataclass(frozen=True)
class EditId:
    """One edit: its context and sample, and the round (training edits) or the teacher version
    (held-out edits) it belongs to; neither for `seal generate`, no sample either for `seal continual`."""

    context: str
    sample: Optional[int] = None
    round: Optional[int] = None
    version: Optional[int] = None

    @classmethod
    def train(cls, round: int, context: str, sample: int) -> EditId:
        return cls(context, sample, round=round)

    @classmethod
    def heldout(cls, version: int, context: str, sample: int) -> EditId:
        return cls(context, sample, version=version)

    @property
    def purpose(self) -> str:
        """'train', 'heldout' or 'generate' (seal generate and seal continual)."""
        return "train" if self.round is not None else "heldout" if self.version is not None else "generate"

    def __str__(self) -> str:
        if self.round is not None:
            return f"r{self.round}/{self.context}/{self.sample}"
        if self.version is not None:
            return f"v{self.version}/heldout/{self.context}/{self.sample}"
        return self.context if self.sample is None else f"{self.context}/{self.sample}"

    @classmethod
    def parse(cls, text: str) -> EditId:
        if m := _TRAIN.fullmatch(text):
            return cls(m[2], int(m[3]), round=int(m[1]))
        if m := _HELDOUT.fullmatch(text):
            return cls(m[2], int(m[3]), version=int(m[1]))
        if m := _GENERATE.fullmatch(text):
            return cls(m[1], int(m[2]))
        if _CONTINUAL.fullmatch(text):
            return cls(text)
        raise ValueError(f"{text!r} is not an edit id (r<round>/<context>/<sample>, v<version>/heldout/<context>/"
                         f"<sample>, <context>/<sample> or <context>)")


@dataclass(frozen=True)
class CondKey:
    """An adaptation without a teacher edit, or `seal evaluate`'s seeded one: a condition (base,
    passage, default_ttt; evaluate also teacher and file) on one context or a group of them."""

    condition: str
    contexts: tuple[str, ...]
    seed: Optional[int] = None  # seal evaluate's adaptation seed (its base jobs have none)
    sample: Optional[int] = None  # seal evaluate: the i-th edit of the teacher or the file

    def __str__(self) -> str:
        if self.seed is None:
            return f"{self.condition}/{self.contexts[0]}"
        return f"s{self.seed}/{self.unseeded()}"

    def unseeded(self) -> str:
        """The key's text after its seed: the same adaptation under every seed."""
        tail = "" if self.sample is None else f"/{self.sample}"
        return f"{self.condition}/{'+'.join(self.contexts)}{tail}"

    @classmethod
    def parse(cls, text: str) -> CondKey:
        if m := _SEEDED.fullmatch(text):
            return cls(m[2], tuple(m[3].split("+")), int(m[1]), None if m[4] is None else int(m[4]))
        if m := _COND.fullmatch(text):
            return cls(m[1], (m[2],))
        raise ValueError(f"{text!r} is not a condition key (<condition>/<context> or "
                         f"s<seed>/<condition>/<contexts>[/<sample>])")


@dataclass(frozen=True)
class JobKey:
    """One adaptation of one student: ``{subject}@{model}``."""

    subject: EditId | CondKey
    model: str

    @classmethod
    def of_edit(cls, edit_id: str, model: str) -> JobKey:
        return cls(EditId.parse(edit_id), model)

    @classmethod
    def reference(cls, condition: str, context: str, model: str) -> JobKey:
        """A reference condition (base, passage, default_ttt) of one student on one context."""
        return cls(CondKey(condition, (context,)), model)

    def __str__(self) -> str:
        return f"{self.subject}@{self.model}"

    @property
    def heldout_version(self) -> Optional[int]:
        """The teacher version of a held-out edit's job (None for any other job)."""
        return self.subject.version if isinstance(self.subject, EditId) else None

    @property
    def condition(self) -> Optional[str]:
        """The condition of a job without a teacher edit of seal train (base, passage, default_ttt), or
        of any seal evaluate job; None for an edit's job."""
        return self.subject.condition if isinstance(self.subject, CondKey) else None

    @property
    def seed(self) -> int:
        """seal evaluate's adaptation seed (0 for a key without one)."""
        if isinstance(self.subject, CondKey) and self.subject.seed is not None:
            return self.subject.seed
        return 0

    def without_seed(self) -> str:
        """The key with its seed left out: the same adaptation under every seed of seal evaluate."""
        if isinstance(self.subject, CondKey) and self.subject.seed is not None:
            return f"{self.subject.unseeded()}@{self.model}"
        return str(self)

    @classmethod
    def parse(cls, text: str) -> JobKey:
        subject, at, model = text.partition("@")
        if not at or not model:
            raise ValueError(f"{text!r} is not a job key (<subject>@<model>)")
        if _TRAIN.fullmatch(subject) or _HELDOUT.fullmatch(subject):
            return cls(EditId.parse(subject), model)
        return cls(CondKey.parse(subject), model)
