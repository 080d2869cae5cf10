"""What a domain hands the student: how to train on an edit, and what to answer afterwards.

A domain (knowledge incorporation, ARC, ...) turns (context, self-edit) into a `TrainSpec` and a
context into `Query`s; the student runs both the same way for every domain (LoRA training with
loss only where the spec says, greedy decoding with the domain's stop rule) and gives the answers
back to the domain's ``score``. Plain data, so the student never needs to know which domain it is in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class TrainSpec:
    """The training an edit asks for."""

    sequences: tuple[str, ...] = ()
    """Plain text sequences, loss on every token (knowledge: the edit's items and the passage)."""
    pairs: tuple[tuple[str, str], ...] = ()
    """(prompt, target) pairs; the student renders the prompt exactly as it renders a ``raw`` query
    (through its chat template if it has one), so training and prediction see the same text."""
    prompt_loss: bool = False
    """Pairs only: also put loss on the prompt tokens (ARC's 'train_using_all_tokens')."""
    learning_rate: Optional[float] = None
    """Overrides student.train.learning_rate for this adaptation (None: the config's)."""
    epochs: Optional[int] = None
    """Overrides student.train.epochs for this adaptation (None: the config's)."""
    info: dict = field(default_factory=dict)
    """Counts recorded in the result's ``train`` field (items found, dropped by a cap, ...)."""
    invalid: Optional[str] = None
    """Why this edit is not run at all ('reason: message'); it then scores 0 and the reason is kept."""


@dataclass(frozen=True)
class Decode:
    """How the student answers a query."""

    style: str
    """'question': wrap the text in the student's answer prompt (instruction, few-shot examples);
    'raw': the text is the whole prompt (chat-wrapped as one user turn for chat models)."""
    stop: str
    """'line': cut at the first newline (stops on any newline token); 'blank': stop at an empty line."""


@dataclass(frozen=True)
class Query:
    """One thing the student answers about a context, with the passage/demonstrations as the domain puts them."""

    text: str
    """The question (style 'question') or the whole prompt (style 'raw')."""
    gold: str
    """The reference answer, as text (for the verdict record)."""
    max_new_tokens: int
    """Decoding budget of this query."""
    tag: str = ""
    """The domain's own label, handed back to its ``score`` (ARC: 'test index/view')."""
