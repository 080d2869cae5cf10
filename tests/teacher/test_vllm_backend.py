"""The vLLM backend without vLLM: `VLLMBackend` driven against a fake engine, plus the engine's
settings, the KV-cache size, model paths, and the error a machine without vllm gets. Its behaviour
against the transformers backend is tested where vllm runs (tests/with_vllm, `make test-vllm`); the
test marked ``gpu`` covers what only CUDA has (CUDA graph capture, a KV cache sized by
gpu_memory_utilization).

The fake stands where the ``vllm`` package would be (``sys.modules``; the backend imports vllm only
inside its functions): `FakeLLM` for ``vllm.LLM``, `FakeSamplingParams` for ``vllm.SamplingParams``,
and a platform object for ``vllm.platforms.current_platform``. `FakeLLM` has the semantics the backend
relies on, not vLLM's numerics: sample s of a request draws from a stream seeded with the request's
seed + s (temperature 0: one stream per prompt, whatever the seed); a completion runs until a token
in ``stop_token_ids`` (kept in ``token_ids``, finish_reason 'stop') or ``max_tokens`` ('length'); and
a RequestOutput lists its completions out of sample order, which vLLM does not promise to keep."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
import types
from types import SimpleNamespace

import pytest

from core import catalog
from core.config import ConfigError
from core.models import CPU_KV_CACHE_GIB, kv_cache_kwargs, vllm_platform, vllm_problem
from teacher.backend import batch_seed
from teacher.config import TeacherConfig
from teacher.transformers_backend import make_backend
from teacher.prompts import tokenize_prompt
from teacher.vllm_backend import VLLMBackend, engine_kwargs, model_path

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


# ----- the fake engine --------------------------------------------------------------------------
WORDS = list(range(10, 16))  # the non-stop tokens the fake emits


class FakeSamplingParams:
    """``vllm.SamplingParams`` with only the keyword arguments the backend may pass (others: TypeError)."""

    def __init__(self, *, n, max_tokens, seed, stop_token_ids, skip_special_tokens, temperature, top_p=1.0):
        self.n, self.max_tokens, self.seed, self.stop_token_ids = n, max_tokens, seed, stop_token_ids
        self.skip_special_tokens, self.temperature, self.top_p = skip_special_tokens, temperature, top_p


def fake_completion(prompt_ids: list[int], params: FakeSamplingParams, index: int) -> SimpleNamespace:
    """Sample ``index`` of one request, as `FakeLLM` writes it (tests use it to know what to expect)."""
    greedy = params.temperature == 0
    rng = random.Random(f"{prompt_ids}" if greedy else f"{prompt_ids}:{params.seed + index}")
    stops = list(params.stop_token_ids)
    tokens: list[int] = []
    while len(tokens) < params.max_tokens and not (tokens and tokens[-1] in stops):
        tokens.append(rng.choice(WORDS + stops))  # with one stop id: a 1-in-7 chance a token
    finish = "stop" if tokens[-1] in stops else "length"
    text = " " + " ".join(f"w{t}" for t in tokens if t not in stops) + " \n"  # stripped by the backend
    return SimpleNamespace(index=index, text=text, token_ids=tuple(tokens), finish_reason=finish)


class FakeLLM:
    """``vllm.LLM``: records its engine arguments and every generate call."""

    built: list = []  # every engine built in the test (the fixture empties it)

    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.shutdowns = kwargs, [], 0
        FakeLLM.built.append(self)

    def generate(self, prompts, sampling_params, *, use_tqdm=True):
        assert len(prompts) == len(sampling_params), "one SamplingParams per prompt"
        assert all(isinstance(p, FakeSamplingParams) for p in sampling_params)
        self.calls.append((prompts, sampling_params))
        return [SimpleNamespace(prompt_token_ids=p["prompt_token_ids"],
                                outputs=[fake_completion(p["prompt_token_ids"], sp, s) for s in reversed(range(sp.n))])
                for p, sp in zip(prompts, sampling_params)]

    def shutdown(self):
        self.shutdowns += 1


@pytest.fixture
def fake_vllm(monkeypatch):
    """A fake ``vllm`` package on vLLM's CPU platform; ``fake_vllm.platforms.current_platform`` can be
    swapped for another device."""
    vllm = types.ModuleType("vllm")
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = SimpleNamespace(device_type="cpu", is_cpu=lambda: True)
    vllm.LLM, vllm.SamplingParams, vllm.platforms = FakeLLM, FakeSamplingParams, platforms
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    monkeypatch.setattr(FakeLLM, "built", [])
    return vllm


def vllm_config(model: str, **gen) -> TeacherConfig:
    cfg = TeacherConfig(model=model)
    cfg.generation.backend = "vllm"
    for k, v in {"max_new_tokens": 5, "temperature": 0.7, "top_p": 0.9, **gen}.items():
        setattr(cfg.generation, k, v)
    return cfg


@pytest.fixture
def backend(fake_vllm, tiny_model):
    b = VLLMBackend(tiny_model, vllm_config(tiny_model))
    yield b
    b.close()


PROMPTS = ["Vell lighthouse facts.", "A", "Vell lighthouse facts."]  # the first and last are the same


def test_n_samples_per_prompt_in_prompt_and_sample_order(backend):
    out = backend.generate(PROMPTS, 3, seed=11)
    assert [len(gens) for gens in out] == [3, 3, 3]
    (inputs, params), = backend.llm.calls
    # Prompts reach the engine as the ids `tokenize_prompt` gives (the transformers backend's and
    # the SFT update's), one request per prompt, in prompt order.
    assert [x["prompt_token_ids"] for x in inputs] == [tokenize_prompt(backend.tokenizer, p, backend.chat) for p in PROMPTS]
    for i, gens in enumerate(out):
        want = [fake_completion(inputs[i]["prompt_token_ids"], params[i], s).text.strip() for s in range(3)]
        assert [g.text for g in gens] == want  # sample order, though the fake lists them backwards
    assert len({g.text for gens in out for g in gens}) > 3  # the check can tell samples apart


def test_each_prompt_has_its_own_seed_from_batch_seed(backend):
    out = backend.generate(PROMPTS, 2, seed=11)
    (_, params), = backend.llm.calls
    # vLLM seeds a request's samples as seed + sample index: one seed for all prompts would give the
    # two equal prompts the same edits. Each prompt's seed is batch_seed(call seed, prompt index),
    # cut to 31 bits so seed + index stays in range.
    assert [p.seed for p in params] == [batch_seed(11, i) % 2 ** 31 for i in range(3)]
    assert out[0] != out[2]
    assert backend.generate(PROMPTS, 2, seed=11) == out
    assert backend.generate(PROMPTS, 2, seed=12) != out


def test_finished_and_n_tokens_follow_the_engine_output(fake_vllm, tiny_model):
    b = VLLMBackend(tiny_model, vllm_config(tiny_model, max_new_tokens=4))
    prompts = [f"Passage {i}." for i in range(12)]
    out = b.generate(prompts, 4, seed=0)
    (inputs, params), = b.llm.calls
    assert b.tokenizer.eos_token_id in params[0].stop_token_ids  # edits end where the model's EOS is
    kinds = set()
    for i, gens in enumerate(out):
        for s, g in enumerate(gens):
            raw = fake_completion(inputs[i]["prompt_token_ids"], params[i], s)
            # The stop token that ended a row counts, as in the transformers backend's `finish`.
            assert (g.n_tokens, g.finished) == (len(raw.token_ids), raw.finish_reason == "stop")
            assert g.finished or g.n_tokens == 4
            kinds.add(g.finished)
    assert kinds == {True, False}  # both endings were seen
    b.close()


def test_greedy_ignores_the_seed_and_needs_n_1(backend):
    one = backend.generate(PROMPTS, 1, greedy=True, seed=1)
    assert backend.generate(PROMPTS, 1, greedy=True, seed=2) == one  # greedy: temperature 0, no stream
    assert one[0] == one[2]
    calls = len(backend.llm.calls)
    with pytest.raises(ValueError, match="greedy decoding gives 2 identical samples; ask for n=1"):
        backend.generate(PROMPTS, 2, greedy=True)
    assert len(backend.llm.calls) == calls  # refused before the engine is asked


@pytest.mark.parametrize("gen, n, choices, needle", [
    ({}, 0, None, "n must be >= 1"),
    ({"temperature": 0.0}, 2, None, "teacher.generation.temperature must be > 0"),
    ({"top_p": 1.5}, 2, None, r"teacher.generation.top_p must be in \(0, 1\]"),
    ({}, 2, ["a", "b"], "implemented for the transformers backend only"),
])
def test_bad_requests_are_refused_before_the_engine(fake_vllm, tiny_model, gen, n, choices, needle):
    b = VLLMBackend(tiny_model, vllm_config(tiny_model, **gen))
    with pytest.raises(ValueError, match=needle):
        b.generate(PROMPTS, n, choices=choices)
    assert b.llm.calls == []


def test_no_prompts_no_engine_call(backend):
    assert backend.generate([], 2) == []
    assert backend.llm.calls == []


def test_close_shuts_the_engine_down_once(backend):
    engine = backend.llm
    backend.close()
    backend.close()
    assert engine.shutdowns == 1 and backend.llm is None


@pytest.mark.parametrize("device, cpu", [("cpu", True), ("cuda", False)])
def test_engine_kv_cache_is_sized_on_the_cpu_platform_only(fake_vllm, tiny_model, device, cpu):
    # vLLM's CPU platform would read gpu_memory_utilization as a share of the machine's RAM.
    fake_vllm.platforms.current_platform = SimpleNamespace(device_type=device, is_cpu=lambda: cpu)
    VLLMBackend(tiny_model, vllm_config(tiny_model))
    engine, = FakeLLM.built
    assert engine.kwargs.get("kv_cache_memory_bytes") == (int(CPU_KV_CACHE_GIB * (1 << 30)) if cpu else None)


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


def test_adapter_versions_are_refused_before_an_engine_starts(tmp_path, fake_vllm):
    (tmp_path / "v2").mkdir()
    (tmp_path / "v2" / "manifest.json").write_text(json.dumps({"save": "adapter", "parent": "../v1"}))
    with pytest.raises(ConfigError, match="teacher.sft.save=merged"):
        model_path(str(tmp_path / "v2"))
    with pytest.raises(ConfigError, match="is adapter-only .* use teacher.sft.save=merged"):
        VLLMBackend(str(tmp_path / "v2"), vllm_config(str(tmp_path / "v2")))
    assert FakeLLM.built == []


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
