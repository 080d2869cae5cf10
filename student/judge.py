"""LLM-judge grader: asks an OpenAI-compatible chat endpoint whether an answer matches the gold.

Why: the reference implementation of SEAL graded the student's closed-book answers with GPT-4.1
as a judge rather than with string metrics; rewards comparable to the paper need the same kind of
grader. Any OpenAI-compatible server works; only the standard library is used (no dependency).

Design:
- The judge is told to reply with one word, ``yes`` or ``no``; the reply's first word is read
  case-insensitively with punctuation stripped. Anything else is an unreadable verdict.
- Retries: HTTP 429, 5xx, network errors/timeouts and unreadable verdicts are transient and are
  retried up to ``max_retries`` times, sleeping ``backoff_s * 2**attempt`` between tries. Other
  4xx (bad model, key or URL) will not heal by waiting, so they fail at once with ``JudgeError``.
- Cache: verdicts keyed by (question, gold, answer) are persisted as JSON lines, one verdict
  appended (one ``write`` on an O_APPEND file, then fsync) as soon as it is paid for. Workers of a
  run share the file: appends never overwrite each other (a whole-file rewrite per worker lost half
  the verdicts of two workers), and before paying for a verdict a grader reads what the others
  appended since it last looked. A line torn by a crash is skipped; the next opener ends it with a
  newline so that the next verdict starts on a line of its own. JSON, never pickle: the file is
  data, not code. Empty answers score 0.0 without a call.
"""
from __future__ import annotations

import http.client
import json
import os
import string
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional, Union

from core.config import ConfigError
from student.config import JudgeConfig

SYSTEM_PROMPT = "You grade answers to questions. Reply with exactly one word: yes or no."
USER_TEMPLATE = ("Question: {question}\nGold answer: {gold}\nStudent answer: {answer}\n"
                 "Does the student answer match the gold answer in meaning? Reply with one word: yes or no.")
_VERDICTS = {"yes": 1.0, "no": 0.0}

Key = tuple[str, str, str]


class JudgeError(RuntimeError):
    """The judge endpoint could not produce a verdict."""


class _Transient(Exception):
    """A failure worth retrying (rate limit, server error, network, malformed reply)."""


def parse_verdict(text: str) -> Optional[float]:
    """1.0 for yes, 0.0 for no, None when the reply is neither."""
    words = text.split()
    return _VERDICTS.get(words[0].strip(string.punctuation).lower()) if words else None


class JudgeGrader:
    """Grades (question, gold, answer) triples with a cached, retrying LLM judge."""

    def __init__(self, cfg: JudgeConfig, cache_path: Union[str, Path, None] = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg = cfg
        self.url = cfg.base_url.rstrip("/") + "/chat/completions"
        path = cache_path if cache_path is not None else cfg.cache_path
        self.cache = VerdictCache(Path(path) if path is not None else None)
        self._sleep = sleep  # injectable so tests need not wait through backoff

    def grade(self, question: str, gold: str, answer: str) -> float:
        """1.0 if the judge says the answer matches the gold, else 0.0."""
        if not answer.strip():
            return 0.0  # nothing to judge; do not pay for it
        key = (question, gold, answer)
        verdict = self.cache.get(key)
        if verdict is None:
            verdict = self._ask(question, gold, answer)
            self.cache.add(key, verdict)
        return verdict

    def grade_many(self, items: list[tuple[str, str, str]]) -> list[float]:
        """Grades each triple in order (cached ones cost nothing)."""
        return [self.grade(q, g, a) for q, g, a in items]

    def _ask(self, question: str, gold: str, answer: str) -> float:
        user = USER_TEMPLATE.format(question=question, gold=gold, answer=answer)
        last = "no attempt made"
        for attempt in range(self.cfg.max_retries + 1):
            try:
                verdict = parse_verdict(self._post(user))
                if verdict is not None:
                    return verdict
                last = "unreadable verdict (expected 'yes' or 'no')"
            except _Transient as exc:
                last = str(exc)
            if attempt < self.cfg.max_retries:
                self._sleep(self.cfg.backoff_s * 2**attempt)
        raise self._error(f"gave up after {self.cfg.max_retries + 1} attempts; last error: {last}")

    def _post(self, user: str) -> str:
        """One request; returns the reply text. Raises _Transient or JudgeError."""
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
        body = {"model": self.cfg.model, "temperature": 0, "messages": messages}
        headers = {"Content-Type": "application/json"}
        if key := os.environ.get(self.cfg.api_key_env):  # read per call: keys may be set late
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.timeout_s) as resp:
                data = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:  # before OSError: HTTPError is one
            detail = f"HTTP {exc.code}: {exc.read()[:200].decode('utf-8', 'replace')}"
            if exc.code == 429 or exc.code >= 500:
                raise _Transient(detail) from exc
            raise self._error(detail) from exc
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        except ValueError as exc:  # a proxy's HTML page instead of JSON
            raise _Transient(f"response is not JSON: {exc}") from exc
        try:
            return str(data["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError) as exc:
            raise _Transient(f"response not in chat-completions format: {exc!r}") from exc

    def _error(self, what: str) -> JudgeError:
        return JudgeError(
            f"LLM judge at {self.url} (model {self.cfg.model!r}) failed: {what}. "
            f"Check judge.base_url, judge.model, and that the API key env var named by "
            f"judge.api_key_env ({self.cfg.api_key_env!r}) is set correctly."
        )


class VerdictCache:
    """Verdicts by (question, gold, answer), in memory and (``path`` not None) in a JSONL file that
    several processes may append to at once (see the module docstring)."""

    def __init__(self, path: Optional[Path]) -> None:
        self.path = path
        self._verdicts: dict[Key, float] = {}
        self._offset = 0  # bytes of the file read so far (always just after a newline)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file():
            with open(path, "rb") as f:
                if f.read(1) == b"[":  # the format before JSONL: one JSON list, rewritten whole
                    raise ConfigError(f"{path} is a judge cache in the old JSON-list format; rewrite it with each "
                                      f"object of the list on a line of its own (JSONL), or delete it to pay for "
                                      f"its verdicts again")
            self._refresh()
            if path.stat().st_size > self._offset:
                self._append(b"\n")  # a torn last line: end it, so that the next verdict starts clean

    def get(self, key: Key) -> Optional[float]:
        if key not in self._verdicts:
            self._refresh()  # another worker may have paid for it since we last looked
        return self._verdicts.get(key)

    def add(self, key: Key, verdict: float) -> None:
        self._verdicts[key] = verdict
        if self.path is not None:
            q, g, a = key
            row = dict(question=q, gold=g, answer=a, verdict=verdict)
            self._append((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))

    def __len__(self) -> int:
        return len(self._verdicts)

    def _refresh(self) -> None:
        """Read the lines appended since the last read; a line torn by a crash is skipped."""
        if self.path is None or not self.path.is_file():
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a last line without newline may still be being written
        self._offset += end
        for line in data[:end].splitlines():
            try:
                r = json.loads(line)
                self._verdicts[(r["question"], r["gold"], r["answer"])] = float(r["verdict"])
            except (ValueError, KeyError, TypeError):
                continue  # torn by a crash (or blank): that verdict is paid for again, once

    def _append(self, data: bytes) -> None:
        # One write() on an O_APPEND descriptor: the kernel puts it at the end of the file whole,
        # so appends of concurrent processes never overwrite or split each other.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
