"""The vLLM backend without vLLM: request checks and seeds, the KV-cache size, model paths, and the
error a machine without vllm gets. Its behaviour against the transformers backend is tested where
vllm runs (tests/with_vllm, `make test-vllm`); the test marked ``gpu`` covers what only CUDA has (CUDA
graph capture, a KV cache sized by gpu_memory_utilization)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from orchestration.core import catalog
from orchestration.core.config import ConfigError
from teacher.config import GenerationSettings, TeacherConfig
from teacher.generate import make_backend
from orchestration.core.models import kv_cache_kwargs, vllm_platform, vllm_problem
from teacher.vllm_backend import engine_kwargs, model_path, prompt_seed, requests, sampling_kwargs

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


GEN = GenerationSettings(temperature=0.7, top_p=0.9, max_new_tokens=64)


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


@pytest.mark.parametrize("has_vllm, device_type, needles", [
    (False, None, ["vllm package", "pip install -e '.[gpu]'", "make vllm-env", "x.backend=transformers"]),
    (True, "", ["finds no platform", "make vllm-env", "x.backend=transformers"]),
])
def test_vllm_problem_names_field_and_fix(has_vllm, device_type, needles):
    msg = vllm_problem(has_vllm, device_type, "x.backend")
    assert msg.startswith("x.backend=vllm") and all(n in msg for n in needles)


@pytest.mark.parametrize("device_type", ["cuda", "cpu"])
def test_vllm_problem_none_where_vllm_has_a_platform(device_type):
    assert vllm_problem(True, device_type, "x.backend") is None


@pytest.mark.parametrize("gib, on_cpu, expected", [
    (None, False, {}),  # a GPU engine sizes its cache from gpu_memory_utilization
    (None, True, {"kv_cache_memory_bytes": 2 << 30}),  # the CPU platform's default
    (0.5, False, {"kv_cache_memory_bytes": 1 << 29}),
    (0.5, True, {"kv_cache_memory_bytes": 1 << 29}),
])
def test_kv_cache_is_sized_explicitly_on_the_cpu_platform(gib, on_cpu, expected):
    assert kv_cache_kwargs(gib, on_cpu) == expected
    cfg = TeacherConfig()
    cfg.generation.kv_cache_gib = gib
    kw = engine_kwargs("/models/x", cfg, on_cpu)
    assert {k: v for k, v in kw.items() if k == "kv_cache_memory_bytes"} == expected


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here: nothing to refuse")
def test_vllm_platform_raises_clear_error_here():
    with pytest.raises(ConfigError, match="teacher.generation.backend=transformers") as e:
        vllm_platform("teacher.generation.backend")
    assert str(e.value).startswith("teacher.generation.backend=vllm needs")


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here: nothing to refuse")
def test_make_backend_vllm_refused_before_loading(tiny_model):
    cfg = TeacherConfig(model=tiny_model)
    cfg.generation.backend = "vllm"
    with pytest.raises(ConfigError, match=r"teacher\.generation\.backend=vllm needs") as e:
        make_backend(tiny_model, cfg)
    assert "pip install -e '.[gpu]'" in str(e.value) and "make vllm-env" in str(e.value)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_VLLM and has_gpu()), reason="needs vllm and a CUDA GPU")
def test_vllm_backend_generates_on_gpu():
    """With CUDA graphs (enforce_eager false) and the cache sized by gpu_memory_utilization."""
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
