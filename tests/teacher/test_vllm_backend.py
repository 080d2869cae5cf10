"""The vLLM backend without vLLM: request building, output conversion, model paths, and the error a
machine without vllm or a GPU gets. The one test that runs the engine carries the ``gpu`` marker."""

from __future__ import annotations

import importlib.util
import json
from types import SimpleNamespace

import pytest

from orchestration.core import catalog
from orchestration.core.config import ConfigError
from teacher.config import GenerationSettings, TeacherConfig
from teacher.generate import Generation, make_backend
from orchestration.core.models import require_vllm, vllm_problem
from teacher.vllm_backend import (engine_kwargs, model_path, prompt_seed, requests, sampling_kwargs, to_generation,
                                  to_generations)

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


GEN = GenerationSettings(temperature=0.7, top_p=0.9, max_new_tokens=64)
BASE = {"max_tokens": 64, "seed": 5, "stop_token_ids": [2, 7], "skip_special_tokens": True}


@pytest.mark.parametrize("n, greedy, expected", [
    (1, True, {**BASE, "n": 1, "temperature": 0.0}),  # greedy: temperature 0, no top_p
    (1, False, {**BASE, "n": 1, "temperature": 0.7, "top_p": 0.9}),
    (4, False, {**BASE, "n": 4, "temperature": 0.7, "top_p": 0.9}),
])
def test_sampling_kwargs(n, greedy, expected):
    assert sampling_kwargs(GEN, n, greedy, 5, (2, 7)) == expected


@pytest.mark.parametrize("gen, n, greedy, needle", [
    (GEN, 0, False, "n must be >= 1"),
    (GEN, 2, True, "n=1"),
    (GenerationSettings(temperature=0.0), 2, False, "teacher.generation.temperature"),
    (GenerationSettings(top_p=0.0), 2, False, "teacher.generation.top_p"),
    (GenerationSettings(top_p=1.5), 2, False, "teacher.generation.top_p"),
])
def test_sampling_kwargs_errors_name_the_key(gen, n, greedy, needle):
    with pytest.raises(ValueError, match=needle):
        sampling_kwargs(gen, n, greedy, 0)


def test_requests_one_token_prompt_and_own_seed_per_prompt():
    inputs, params = requests([[5, 6], [7], [5, 6]], GEN, 3, False, seed=11, stops=[2])
    assert inputs == [{"prompt_token_ids": [5, 6]}, {"prompt_token_ids": [7]}, {"prompt_token_ids": [5, 6]}]
    seeds = [p["seed"] for p in params]
    # Distinct even for equal prompts (vLLM seeds a request's samples as seed + sample index), in range,
    # and a function of (call seed, prompt index) only.
    assert len(set(seeds)) == 3 and all(0 <= s < 2 ** 31 for s in seeds)
    assert seeds == [prompt_seed(11, i) for i in range(3)]
    assert [p["seed"] for p in requests([[1]] * 3, GEN, 1, True, 11, [])[1]] == seeds
    assert {p["n"] for p in params} == {3} and all(p["stop_token_ids"] == [2] for p in params)
    assert requests([], GEN, 2, False, 0, []) == ([], [])


@pytest.mark.parametrize("text, ids, reason, expected", [
    ("  Fact one.\nFact two. \n", [4, 5, 6, 2], "stop", Generation("Fact one.\nFact two.", 4, True)),
    ("cut short", [4, 5, 6], "length", Generation("cut short", 3, False)),
    ("", [2], "stop", Generation("", 1, True)),
    ("aborted", [4], None, Generation("aborted", 1, False)),
])
def test_to_generation(text, ids, reason, expected):
    assert to_generation(text, ids, reason) == expected


def test_to_generations_in_sample_order():
    out = SimpleNamespace(outputs=[SimpleNamespace(index=1, text="b", token_ids=(1, 2), finish_reason="length"),
                                   SimpleNamespace(index=0, text="a", token_ids=(1,), finish_reason="stop")])
    assert to_generations(out) == [Generation("a", 1, True), Generation("b", 2, False)]


def test_engine_kwargs():
    cfg = TeacherConfig(trust_remote_code=True)
    cfg.generation.seed, cfg.generation.gpu_memory_utilization = 3, 0.4
    kw = engine_kwargs("/models/x", cfg)
    assert kw == {"model": "/models/x", "tokenizer": "/models/x", "dtype": "auto", "seed": 3,
                  "gpu_memory_utilization": 0.4, "trust_remote_code": True, "enable_prefix_caching": True,
                  "enforce_eager": False}
    cfg.generation.dtype, cfg.generation.max_model_len = "bf16", 4096
    kw = engine_kwargs("/models/x", cfg)
    assert kw["dtype"] == "bfloat16" and kw["max_model_len"] == 4096
    cfg.generation.dtype = "fp32"
    assert engine_kwargs("/models/x", cfg)["dtype"] == "float32"


@pytest.mark.parametrize("field, value, needle", [
    ("dtype", "fp16", "teacher.generation.dtype"),
    ("gpu_memory_utilization", 0.0, "teacher.generation.gpu_memory_utilization"),
    ("gpu_memory_utilization", 1.5, "teacher.generation.gpu_memory_utilization"),
])
def test_engine_kwargs_errors_name_the_key(field, value, needle):
    cfg = TeacherConfig()
    setattr(cfg.generation, field, value)
    with pytest.raises(ValueError, match=needle):
        engine_kwargs("/models/x", cfg)


def test_model_path_resolves_like_load_model(tmp_path, tiny_model):
    # A materialised built-in resolves to its folder in the cache (the marker is what counts).
    (tmp_path / "gemma3-270m").mkdir()
    (tmp_path / "gemma3-270m" / catalog.MARKER).write_text("{}")
    assert model_path("gemma3-270m", str(tmp_path)) == str(tmp_path / "gemma3-270m")
    assert model_path(tiny_model) == tiny_model
    assert model_path("Qwen/Qwen2.5-7B") == "Qwen/Qwen2.5-7B"  # hub ids pass through to vLLM


def test_model_path_refuses_adapter_versions(tmp_path):
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "manifest.json").write_text(json.dumps({"save": "adapter", "parent": "../v1"}))
    with pytest.raises(ConfigError, match="teacher.sft.save=merged"):
        model_path(str(tmp_path / "v2"))


@pytest.mark.parametrize("has_vllm, has_cuda, needles", [
    (False, False, ["vllm package", "pip install -e '.[gpu]'", "x.backend=transformers"]),
    (False, True, ["vllm package", "pip install -e '.[gpu]'", "x.backend=transformers"]),
    (True, False, ["CUDA GPU", "x.backend=transformers"]),
])
def test_vllm_problem_names_field_and_fix(has_vllm, has_cuda, needles):
    msg = vllm_problem(has_vllm, has_cuda, "x.backend")
    assert msg.startswith("x.backend=vllm") and all(n in msg for n in needles)


def test_vllm_problem_none_when_runnable():
    assert vllm_problem(True, True, "x.backend") is None


@pytest.mark.skipif(HAS_VLLM and has_gpu(), reason="vllm and a GPU are present: nothing to refuse")
def test_require_vllm_raises_clear_error_here():
    with pytest.raises(ConfigError, match="teacher.generation.backend=transformers") as e:
        require_vllm("teacher.generation.backend")
    assert str(e.value).startswith("teacher.generation.backend=vllm needs")


@pytest.mark.skipif(HAS_VLLM and has_gpu(), reason="vllm and a GPU are present: nothing to refuse")
def test_make_backend_vllm_refused_before_loading(tiny_model):
    cfg = TeacherConfig(model=tiny_model)
    cfg.generation.backend = "vllm"
    with pytest.raises(ConfigError, match=r"teacher\.generation\.backend=vllm needs") as e:
        make_backend(tiny_model, cfg)
    if not HAS_VLLM:
        assert "pip install -e '.[gpu]'" in str(e.value)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_VLLM and has_gpu()), reason="needs vllm and a CUDA GPU")
def test_vllm_backend_generates_on_gpu():
    from teacher.prompts import render

    cfg = TeacherConfig(model="smollm2-135m-instruct")
    cfg.generation.backend, cfg.generation.max_new_tokens = "vllm", 24
    cfg.generation.gpu_memory_utilization = 0.3
    b = make_backend(cfg.model, cfg)
    try:
        prompts = [render("implications", {}, "Vell", "The Vell lighthouse was lit in 1871.", b.tokenizer, b.chat),
                   render("implications", {}, "Oss", "Oss is a river town with two bridges.", b.tokenizer, b.chat)]
        out = b.generate(prompts, 3, seed=1)
        assert [len(g) for g in out] == [3, 3]
        assert all(1 <= g.n_tokens <= 24 and (g.finished or g.n_tokens == 24) for gens in out for g in gens)
        assert b.generate(prompts, 3, seed=1) == out
        assert len(b.generate(prompts, 1, greedy=True)) == 2
    finally:
        b.close()
