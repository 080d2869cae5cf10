"""Fault injection for the kill-resume tests: a process SIGKILLs itself at a named point.

``SEAL_FAULT=<point>[:<n>]`` kills the process the n-th time (default: the first) it passes
``fault(<point>)``. With ``SEAL_FAULT_MARK=<file>`` the fault fires at most once across processes:
the file is created just before the kill, and a process that finds it does nothing (a worker the
driver restarts inherits the same environment, and must not die again). Unset, ``fault()`` is a
dictionary lookup: nothing in a normal run depends on it.

The points (where they sit, and what a kill there tests):
  generate  driver, after a chunk of edits is generated and before it is saved (a resumed chunk
            must be regenerated whole, with the same batches and seeds)
  result    driver, after a result is appended to results.jsonl ("after k results": n = k)
  sft       driver, after an optimizer step of the teacher's SFT update
  saved     driver, after a teacher version is saved and before its metrics row is written
  lease     worker, after a job's adaptation finished and before its ack (a lease is held)
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

ENV = "SEAL_FAULT"
MARK_ENV = "SEAL_FAULT_MARK"
POINTS = ("generate", "result", "sft", "saved", "lease")
_passes: Counter = Counter()


def fault(point: str) -> None:
    """SIGKILL this process here if ``SEAL_FAULT`` names ``point`` and this is its n-th pass."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"{ENV}={spec!r}: the fault points are {list(POINTS)}")
    if name != point:
        return
    _passes[point] += 1
    if _passes[point] != int(n or 1):
        return
    mark = os.environ.get(MARK_ENV)
    if mark:
        if Path(mark).exists():
            return
        Path(mark).touch()
    os.kill(os.getpid(), signal.SIGKILL)
