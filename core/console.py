"""The console of a `seal` command: the project's own lines and tables, and one progress bar per
stage (generation, jobs, SFT, evaluation); what the libraries print goes to the run folder's log.

Why: a run loads models, builds datasets and trains through transformers, datasets and TRL, and each
of them draws its own bars ("Loading weights", "Writing model shards", datasets' map bars), logs
dicts (``{'loss': ...}``) and warns. On the console they bury the one table that says how the run
went. They are kept, not thrown away: a warning can explain a failure.

- `quiet()`: while a command runs, file descriptor 2 (stderr, where every library writes; C code
  too) points at a log file. The project's bars write to the console kept aside (`console()`), and
  its lines and tables go to stdout, which is left alone. Errors reach the console in full: the
  `seal: error:` line and any traceback are printed after stderr is restored.
- `attach(path)`: once the run folder exists, the log moves into it as ``logs/seal.log`` (before
  that, it is a temporary file: a refused command must leave no run folder behind).
- `Progress`: a tqdm bar on a terminal; without one (a pipe, CI, a log file), one line at most every
  `EVERY_S` seconds, so a long stage still shows it is alive without redrawing hundreds of times.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, TextIO

EVERY_S = 30.0  # seconds between two progress lines of one stage, without a terminal
LOG_NAME = "logs/seal.log"

_console: TextIO | None = None  # the terminal's stderr, set aside by `quiet`
_log: dict | None = None  # {"path": Path, "attached": bool} while `quiet` is active


def console() -> TextIO:
    """Where the project's progress goes: the real stderr, also while the libraries' go to the log."""
    return _console if _console is not None else sys.stderr


def log_path() -> Path | None:
    """The file the libraries' output goes to now (None: not quiet, it goes to the console)."""
    return None if _log is None else _log["path"]


@contextmanager
def quiet(enabled: bool = True, refusal: Callable[[BaseException], bool] = lambda e: False):
    """Send fd 2 to a log file for the duration (see the module docstring); ``enabled=False`` (seal
    --verbose) changes nothing. If the block raises an error that is not a ``refusal`` (a bug) before
    `attach` found a run folder, the log so far is copied to the console: it may explain the bug."""
    global _console, _log
    if not enabled or _log is not None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    fd, tmp = tempfile.mkstemp(prefix="seal-", suffix=".log")
    os.dup2(fd, 2)
    os.close(fd)
    _console, _log = open(saved, "w", buffering=1, closefd=False), {"path": Path(tmp), "attached": False}
    failed: BaseException | None = None
    try:
        yield
    except BaseException as e:
        failed = e
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        log, _console, _log = _log, None, None
        if not log["attached"]:
            if failed is not None and not isinstance(failed, KeyboardInterrupt) and not refusal(failed):
                sys.stderr.write(log["path"].read_text(errors="replace"))
            log["path"].unlink(missing_ok=True)


def attach(path: str | Path) -> None:
    """Move the log of an active `quiet` to the file ``path`` (appended to, on resume): a run
    folder's ``logs/seal.log`` (`LOG_NAME`). Only the first call counts: `seal compare` opens arm
    folders inside its own."""
    if _log is None or _log["attached"]:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    with open(_log["path"], "rb") as before, os.fdopen(os.dup(fd), "wb") as after:
        shutil.copyfileobj(before, after)
    os.dup2(fd, 2)
    os.close(fd)
    _log["path"].unlink(missing_ok=True)
    _log.update(path=path, attached=True)


class Progress:
    """A progress bar over ``total`` items of one stage: tqdm on a terminal; else a plain line at most
    every ``every_s`` seconds (``desc: n/total units, s``). Use as a context manager, or close()."""

    def __init__(self, total: int, desc: str, unit: str = "it", *, initial: int = 0, file: TextIO | None = None,
                 every_s: float = EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.file, self.every_s, self.clock = file or console(), every_s, clock
        self.bar = None
        if _isatty(self.file):
            from tqdm import tqdm

            # the width from the terminal, 80 where it reports none (tqdm would then draw nothing)
            self.bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, file=self.file, leave=False,
                            ncols=shutil.get_terminal_size().columns)
        self.t0 = self.last = clock()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            print(f"{self.desc}: {self.n}/{self.total} {self.unit}s, {now - self.t0:.0f} s", file=self.file,
                  flush=True)

    def set(self, n: int) -> None:
        """Move to ``n`` done (a count polled from elsewhere, e.g. the queue)."""
        if n != self.n:
            self.update(n - self.n)

    def over(self, items, size: Callable = lambda item: 1):
        """Yield ``items``, counting ``size(item)`` done once the caller's loop body has run; the bar
        closes when the loop ends (or is left early)."""
        try:
            for item in items:
                yield item
                self.update(size(item))
        finally:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _isatty(f) -> bool:
    try:
        return f.isatty()
    except (AttributeError, ValueError):
        return False
