"""The quiet console: the project's lines, tables and bars on the console, the libraries' output in the
run folder's log; progress lines throttled without a terminal; `seal train` end to end on tiny models."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from core import console
from tests.orchestration.test_train import write_config

ROOT = Path(__file__).resolve().parents[2]
NOISE = ("{'loss'", "Warning", "Loading weights")  # TRL's dict log, a library warning, transformers' bar


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_without_a_terminal_a_stage_prints_at_most_one_line_every_30_s():
    out, clock = io.StringIO(), Clock()
    bar = console.Progress(100, "round 0 jobs", "job", file=out, clock=clock)
    for step in range(100):  # one job done every second, for 100 s
        clock.t += 1.0
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == ["round 0 jobs: 30/100 jobs, 30 s", "round 0 jobs: 60/100 jobs, 60 s",
                     "round 0 jobs: 90/100 jobs, 90 s"]
    assert "\r" not in out.getvalue()


def test_set_and_over_count_what_is_done():
    out, clock = io.StringIO(), Clock()
    bar = console.Progress(10, "jobs", "job", file=out, clock=clock, initial=2)
    clock.t = 31.0
    bar.set(7)
    assert bar.n == 7 and out.getvalue() == "jobs: 7/10 jobs, 31 s\n"
    seen = []
    chunks = [[1, 2], [3], [4, 5, 6]]
    bar = console.Progress(6, "edits", "edit", file=out, clock=clock)
    for chunk in bar.over(chunks, len):
        seen.append(bar.n)  # counted once the loop body has run
    assert seen == [0, 2, 3] and bar.n == 6


def test_on_a_terminal_it_is_a_tqdm_bar():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    with console.Progress(3, "teacher SFT", "step", file=out) as bar:
        bar.update(3)
    assert bar.bar is not None and "teacher SFT" in out.getvalue() and "\r" in out.getvalue()


SCRIPT = """
import os, sys, warnings
from core import console
mode = sys.argv[1]
with console.quiet(True, refusal=lambda e: isinstance(e, ValueError)):
    print("project line")
    os.write(2, b"C-level noise\\n")
    warnings.warn("a library Warning")
    if mode == "attach":
        console.attach(sys.argv[2])
        print("more library noise", file=sys.stderr)
        print("project line 2")
    elif mode == "bug":
        raise RuntimeError("a bug")
    elif mode == "refused":
        raise ValueError("a bad input")
"""


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, cwd=ROOT)


def test_quiet_sends_stderr_to_the_log_and_keeps_stdout(tmp_path):
    log = tmp_path / "run" / "logs" / "seal.log"
    p = run_script("attach", str(log))
    assert p.returncode == 0 and p.stdout == "project line\nproject line 2\n" and p.stderr == ""
    text = log.read_text()
    assert "C-level noise" in text and "a library Warning" in text and "more library noise" in text


def test_a_bug_before_the_run_folder_shows_the_log_and_the_traceback(tmp_path):
    p = run_script("bug")
    assert p.returncode == 1
    assert "C-level noise" in p.stderr and "RuntimeError: a bug" in p.stderr  # in full, on the console
    p = run_script("refused")  # a refusal: its one line is the caller's; the log is dropped
    assert "C-level noise" not in p.stderr and "ValueError: a bad input" in p.stderr


def seal_train(tmp_path: Path, cfg: Path, run: Path, *flags: str) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "orchestration.cli", *flags, "train", str(cfg), f"run_dir={run}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def test_seal_train_console_shows_the_tables_and_no_library_noise(tmp_path, tiny_chat_model, tiny_model):
    """A tiny `seal train` (inline worker, so the student's libraries run in the driver too; every
    edit rewarded, so TRL's SFT runs): the console holds the project's table and no library output;
    the run's logs/seal.log holds that output. `--verbose` shows it, so the check can fail."""
    cfg = write_config(tmp_path / "c.yaml", tiny_chat_model, tiny_model, "inline")
    p = seal_train(tmp_path, cfg, tmp_path / "quiet")
    shown = p.stdout + p.stderr
    for noise in NOISE:
        assert noise not in shown, f"{noise!r} on the console:\n{shown}"
    assert "Held-out accuracy" in p.stdout and "v1 - v0" in p.stdout and "run folder:" in p.stdout
    log = (tmp_path / "quiet" / "logs" / "seal.log").read_text()
    assert "Loading weights" in log and "{'loss'" in log

    loud = seal_train(tmp_path, cfg, tmp_path / "loud", "--verbose")
    shown = loud.stdout + loud.stderr
    assert "Loading weights" in shown and "{'loss'" in shown
    assert not (tmp_path / "loud" / "logs" / "seal.log").exists()
