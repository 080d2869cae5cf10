"""JudgeGrader against a scripted loopback stub of an OpenAI-compatible chat endpoint."""

from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from student.config import JudgeConfig
from student.judge import JudgeError, JudgeGrader, VerdictCache, parse_verdict


class Stub:
    """Scripted endpoint state: queued failures are served first, then real verdicts."""

    def __init__(self) -> None:
        self.script: list[tuple[str, object]] = []  # ("status", 500) or ("text", "maybe")
        self.requests: list[dict] = []
        self.base_url = ""

    def verdict(self, user: str) -> str:
        gold = re.search(r"^Gold answer: (.*)$", user, re.M).group(1)
        answer = re.search(r"^Student answer: (.*)$", user, re.M).group(1)
        return "Yes." if gold.lower() in answer.lower() else "no"


def _handler(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            stub.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
            if self.path != "/v1/chat/completions":
                return self._send(404, {"error": "not found"})
            kind, value = stub.script.pop(0) if stub.script else ("verdict", None)
            if kind == "status":
                return self._send(value, {"error": {"message": f"scripted {value}"}})
            text = value if kind == "text" else stub.verdict(body["messages"][-1]["content"])
            self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}}]})

        def _send(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

    return Handler


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # a proxy from the environment would send loopback requests off the machine
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")


@pytest.fixture
def stub():
    s = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(s))
    s.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    # short poll interval: shutdown() otherwise waits up to 0.5 s per test
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield s
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def sleeps() -> list[float]:
    return []


def make(stub: Stub, sleeps: list[float], cache_path=None, **kw) -> JudgeGrader:
    cfg = JudgeConfig(base_url=stub.base_url, model="judge-model", api_key_env="TEST_JUDGE_KEY",
                      timeout_s=5.0, **{"max_retries": 3, "backoff_s": 0.5, **kw})
    return JudgeGrader(cfg, cache_path=cache_path, sleep=sleeps.append)


def test_parse_verdict_is_robust():
    assert parse_verdict("Yes.") == 1.0
    assert parse_verdict("  NO!\n") == 0.0
    assert parse_verdict("yes, the answers match") == 1.0
    assert parse_verdict("**No**") == 0.0
    for bad in ("", "maybe", "The answer is yes", "yess"):
        assert parse_verdict(bad) is None


def test_yes_and_no_verdicts(stub, sleeps):
    g = make(stub, sleeps)
    assert g.grade("Capital of France?", "Paris", "It is Paris") == 1.0
    assert g.grade("Capital of France?", "Paris", "Lyon") == 0.0
    assert g.grade_many([("q", "blue", "Blue sky"), ("q", "red", "green")]) == [1.0, 0.0]
    assert [r["path"] for r in stub.requests] == ["/v1/chat/completions"] * 4
    assert sleeps == []


def test_request_carries_model_temperature_and_auth(stub, sleeps, monkeypatch):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test")
    make(stub, sleeps).grade("q", "a", "a")
    req = stub.requests[0]
    assert req["body"]["model"] == "judge-model"
    assert req["body"]["temperature"] == 0
    assert req["headers"]["Authorization"] == "Bearer sk-test"


@pytest.mark.parametrize("value", [None, ""])
def test_no_auth_header_without_key(stub, sleeps, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("TEST_JUDGE_KEY", raising=False)
    else:
        monkeypatch.setenv("TEST_JUDGE_KEY", value)
    make(stub, sleeps).grade("q", "a", "a")
    assert "Authorization" not in stub.requests[0]["headers"]


def test_retries_after_500_and_429_then_succeeds(stub, sleeps):
    stub.script = [("status", 500), ("status", 429), ("status", 503)]
    assert make(stub, sleeps).grade("q", "gold", "gold!") == 1.0
    assert len(stub.requests) == 4
    assert sleeps == [0.5, 1.0, 2.0]  # backoff_s * 2**attempt


def test_gives_up_after_max_retries(stub, sleeps):
    stub.script = [("status", 500)] * 10
    with pytest.raises(JudgeError) as err:
        make(stub, sleeps, max_retries=2).grade("q", "a", "a")
    assert len(stub.requests) == 3
    assert stub.base_url in str(err.value)
    assert "HTTP 500" in str(err.value) and "judge.base_url" in str(err.value)
    assert "TEST_JUDGE_KEY" in str(err.value)


def test_400_is_not_retried(stub, sleeps):
    stub.script = [("status", 400)]
    with pytest.raises(JudgeError, match="HTTP 400"):
        make(stub, sleeps).grade("q", "a", "a")
    assert len(stub.requests) == 1 and sleeps == []


def test_unreadable_verdict_is_retried(stub, sleeps):
    stub.script = [("text", "I think so"), ("text", "")]
    assert make(stub, sleeps).grade("q", "x", "x") == 1.0
    assert len(stub.requests) == 3 and sleeps == [0.5, 1.0]


def test_unreadable_verdict_forever_raises(stub, sleeps):
    stub.script = [("text", "maybe")] * 10
    with pytest.raises(JudgeError, match="unreadable verdict"):
        make(stub, sleeps, max_retries=1).grade("q", "x", "x")
    assert len(stub.requests) == 2


def test_connection_refused_is_retried_then_raises(sleeps):
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = Stub()
    dead.base_url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(JudgeError, match=str(port)):
        make(dead, sleeps, max_retries=2).grade("q", "a", "a")
    assert sleeps == [0.5, 1.0]


def test_cache_in_memory(stub, sleeps):
    g = make(stub, sleeps)
    assert g.grade("q", "a", "a") == 1.0
    assert g.grade("q", "a", "a") == 1.0
    assert g.grade("q", "a", "b") == 0.0
    assert len(stub.requests) == 2


def test_cache_persists_across_graders(stub, sleeps, tmp_path):
    path = tmp_path / "sub" / "judge_cache.json"
    assert make(stub, sleeps, cache_path=path).grade("q", "a", "a a") == 1.0
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"question": "q", "gold": "a", "answer": "a a", "verdict": 1.0}]
    assert [p.name for p in path.parent.iterdir()] == ["judge_cache.json"]  # no temp files left
    # fresh graders reading the same file (explicitly, or via cfg.cache_path) pay for nothing
    assert make(stub, sleeps, cache_path=str(path)).grade("q", "a", "a a") == 1.0
    from_cfg = JudgeGrader(JudgeConfig(base_url=stub.base_url, cache_path=str(path)), sleep=sleeps.append)
    assert from_cfg.grade("q", "a", "a a") == 1.0
    assert len(stub.requests) == 1


def test_cache_skips_a_torn_line_and_appends_on_a_clean_one(stub, sleeps, tmp_path):
    path = tmp_path / "judge_cache.json"
    row = json.dumps({"question": "q", "gold": "a", "answer": "a", "verdict": 1.0})
    path.write_text(row + '\n{"question": "q", "gold": "b", "ans')  # a crash in the middle of an append
    g = make(stub, sleeps, cache_path=path)
    assert g.grade("q", "a", "a") == 1.0 and stub.requests == []  # the complete line counts
    assert g.grade("q", "b", "c") == 0.0 and len(stub.requests) == 1  # the torn one is paid again, once
    fresh = VerdictCache(path)
    assert len(fresh) == 2 and fresh.get(("q", "b", "c")) == 0.0


def test_cache_in_the_old_json_list_format_is_refused(stub, sleeps, tmp_path):
    from core.config import ConfigError

    path = tmp_path / "judge_cache.json"
    old = json.dumps([{"question": "q", "gold": "a", "answer": "a", "verdict": 1.0}], indent=0)
    path.write_text(old)
    with pytest.raises(ConfigError, match="old JSON-list format.*JSONL.*delete it"):
        make(stub, sleeps, cache_path=path)
    assert path.read_text() == old and not stub.requests  # left as it was, nothing paid for


def _grade_in_process(base_url: str, path: str, worker: int, start) -> None:
    """One worker process of a run: pays for 50 verdicts of its own, into the shared cache."""
    cfg = JudgeConfig(base_url=base_url, model="judge-model", timeout_s=10.0, max_retries=3, backoff_s=0.01)
    grader = JudgeGrader(cfg, cache_path=path)
    start.wait(30)
    for i in range(50):
        grader.grade(f"q{worker}-{i}", "gold", "gold" if i % 2 else "other")


def test_two_processes_sharing_the_cache_lose_no_verdict(stub, tmp_path):
    import multiprocessing as mp

    spawn = mp.get_context("spawn")
    path = tmp_path / "judge_cache.json"
    start = spawn.Event()
    procs = [spawn.Process(target=_grade_in_process, args=(stub.base_url, str(path), w, start)) for w in (0, 1)]
    for p in procs:
        p.start()
    start.set()  # both write at once
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(stub.requests) == 100
    fresh = VerdictCache(path)
    assert len(fresh) == 100
    assert all(fresh.get((f"q{w}-{i}", "gold", "gold" if i % 2 else "other")) == float(i % 2)
               for w in (0, 1) for i in range(50))
    g = JudgeGrader(JudgeConfig(base_url=stub.base_url), cache_path=path)
    assert g.grade("q1-7", "gold", "gold") == 1.0 and len(stub.requests) == 100  # nothing paid twice


def test_explicit_cache_path_overrides_config(stub, sleeps, tmp_path):
    cfg = JudgeConfig(base_url=stub.base_url, cache_path=str(tmp_path / "cfg.json"))
    JudgeGrader(cfg, cache_path=tmp_path / "explicit.json", sleep=sleeps.append).grade("q", "a", "a")
    assert (tmp_path / "explicit.json").exists() and not (tmp_path / "cfg.json").exists()


def test_empty_answer_makes_no_request(stub, sleeps):
    g = make(stub, sleeps)
    assert g.grade("q", "gold", "") == 0.0
    assert g.grade("q", "gold", "   ") == 0.0
    assert stub.requests == []
