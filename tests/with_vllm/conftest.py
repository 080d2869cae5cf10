"""Fixtures of the `vllm` tests: one engine per role and session (each start costs tens of seconds on
a CPU), the packaged SmolLM2-135M in fp32 on both sides, and the figures the tests measured, printed
as JSON at the end of the run (the README's parity figures come from there).

These tests run where vllm is installed: ``make test-vllm`` (vLLM's CPU build in .venv-vllm; part of
``make test``), or on a GPU machine with the ``gpu`` extra."""

from __future__ import annotations

import json
import time

import pytest

MODEL = "smollm2-135m-instruct"
FIGURES: dict[str, dict] = {}
"""name -> what a test measured; printed by `pytest_terminal_summary`."""


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        import vllm

        from core.models import machine

        terminalreporter.write_sep("-", "vllm figures (JSON)")
        terminalreporter.write_line(json.dumps({"machine": machine(), "vllm": vllm.__version__, "figures": FIGURES}, indent=1))


@pytest.fixture(scope="session")
def figures() -> dict[str, dict]:
    """Where a test puts what it measured, under its own name."""
    return FIGURES


@pytest.fixture(scope="session")
def teacher_cfg():
    from teacher.config import TeacherConfig

    cfg = TeacherConfig(model=MODEL)
    g = cfg.generation
    g.dtype, g.max_new_tokens, g.max_model_len, g.enforce_eager = "fp32", 64, 1024, True
    return cfg


@pytest.fixture(scope="session")
def vllm_teacher(teacher_cfg):
    from teacher.vllm_backend import VLLMBackend

    t0 = time.perf_counter()
    backend = VLLMBackend(MODEL, teacher_cfg)
    FIGURES.setdefault("engine_start_s", {})["teacher"] = round(time.perf_counter() - t0, 1)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def hf_teacher(teacher_cfg):
    from teacher.transformers_backend import TransformersBackend

    return TransformersBackend(MODEL, teacher_cfg)


def student_cfg(backend: str):
    from student.config import StudentConfig

    cfg = StudentConfig(model=MODEL)
    cfg.train.dtype = "fp32"
    cfg.answer.backend = backend
    v = cfg.answer.vllm
    v.dtype, v.enforce_eager, v.max_model_len, v.keep_adapters = "float32", True, 1024, 4
    return cfg


@pytest.fixture(scope="session")
def vllm_student():
    """A student that trains in torch and answers through vLLM (one engine for the session)."""
    from student.model import Student

    t0 = time.perf_counter()
    student = Student(student_cfg("vllm"))
    FIGURES.setdefault("engine_start_s", {})["student_with_its_torch_model"] = round(time.perf_counter() - t0, 1)
    yield student
    student.answerer.close()


@pytest.fixture(scope="session")
def hf_student():
    from student.model import Student

    return Student(student_cfg("transformers"))
