"""Answering through vLLM without vLLM: the engine arguments' checks, the adapter book (ids, LRU
eviction, overwritten folders), a student answering through `VLLMAnswerer` on a fake engine (`FakeLLM`,
which caches adapters by id as vLLM does), and the error a machine without vllm gets. Its behaviour
against the transformers path is tested where vllm runs (tests/with_vllm, `make test-vllm`); the test
marked ``gpu`` covers what only CUDA has."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.config import ConfigError
from core.models import vllm_platform
from student.config import AnswerSettings, StudentConfig, VLLMSettings
from student.vllm_answer import AdapterBook, VLLMAnswerer, answer_kwargs, engine_kwargs

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def test_answer_kwargs_refuses_no_tokens():
    with pytest.raises(ValueError, match="student.answer.max_new_tokens"):
        answer_kwargs(0)


def test_max_loras_above_max_cpu_loras_is_refused():
    with pytest.raises(ConfigError, match=r"student.answer.vllm.max_loras=4 is above max_cpu_loras=2"):
        VLLMSettings(max_loras=4, keep_adapters=2).check()


@pytest.mark.parametrize("settings, rank, needle", [
    (VLLMSettings(max_lora_rank=16), 32, "student.answer.vllm.max_lora_rank=16 is below student.lora.r=32"),
    (VLLMSettings(gpu_memory_utilization=0.0), 16, "student.answer.vllm.gpu_memory_utilization"),
    (VLLMSettings(gpu_memory_utilization=1.2), 16, "student.answer.vllm.gpu_memory_utilization"),
    (VLLMSettings(max_loras=0), 16, "student.answer.vllm.max_loras"),
])
def test_engine_kwargs_errors_name_the_key(settings, rank, needle):
    with pytest.raises(ValueError, match=needle):
        engine_kwargs("/m", settings, rank)


def save(folder, content: bytes = b"weights"):
    (folder / "adapter_model.safetensors").write_bytes(content)
    (folder / "adapter_config.json").write_text("{}")
    return folder


def test_book_ids_unique_monotonic_and_stable_for_same_weights(tmp_path):
    book = AdapterBook(tmp_path / "book", keep=10)
    folders = [save(book.new_folder()) for _ in range(4)]
    assert len({str(f) for f in folders}) == 4 and all(f.parent == tmp_path / "book" for f in folders)
    ids = [book.register(f) for f in folders]
    assert ids == [1, 2, 3, 4]
    assert book.register(folders[1]) == 2  # same weights: same id, now most recently used
    assert [i for _, i in book.live()] == [1, 3, 4, 2]
    assert len({AdapterBook.lora_name(i) for i in ids}) == 4


def test_book_evicts_least_recently_used_and_deletes_its_folder(tmp_path):
    book = AdapterBook(tmp_path / "book", keep=2)
    a, b, c = (save(book.new_folder()) for _ in range(3))
    book.register(a)
    book.register(b)
    book.register(a)  # b is now the least recently used
    assert book.register(c) == 3
    assert [i for _, i in book.live()] == [1, 3]
    assert not b.exists() and a.exists() and c.exists()


def test_book_never_deletes_folders_it_did_not_make(tmp_path):
    book = AdapterBook(tmp_path / "book", keep=1)
    outside = tmp_path / "elsewhere"  # e.g. an adapter-only teacher version
    outside.mkdir()
    book.register(save(outside))
    book.register(save(book.new_folder()))
    assert outside.exists() and len(book.live()) == 1


def test_book_new_weights_in_same_folder_get_a_new_id_never_reused(tmp_path):
    book = AdapterBook(tmp_path / "book", keep=4)
    f = save(book.new_folder(), b"first weights")
    first = book.register(f)
    save(f, b"second weights, other bytes")  # overwritten in place, as a second save_pretrained would
    second = book.register(f)
    assert second > first
    assert book.live() == [(str(f.resolve()), second)]  # the old id is retired with its weights
    other = book.register(save(book.new_folder()))
    assert other not in (first, second)


def test_book_refuses_empty_folder_and_bad_cap(tmp_path):
    book = AdapterBook(tmp_path / "book", keep=1)
    with pytest.raises(FileNotFoundError, match="save the adapter"):
        book.register(book.new_folder())
    with pytest.raises(ValueError, match="keep_adapters"):
        AdapterBook(tmp_path / "b2", keep=0)


def test_new_folder_skips_existing_names(tmp_path):
    (tmp_path / "a000000").mkdir()
    assert AdapterBook(tmp_path).new_folder() == tmp_path / "a000001"


# ----- a student answering through VLLMAnswerer on a fake engine ---------------------------------
@dataclass(frozen=True)
class FakeSamplingParams:
    """The fields of ``vllm.SamplingParams`` that the answerer sets."""

    n: int
    temperature: float
    max_tokens: int
    stop: list
    skip_special_tokens: bool


@dataclass(frozen=True)
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str


@dataclass(frozen=True)
class _Completion:
    text: str


@dataclass(frozen=True)
class _Output:
    outputs: list


def weights_tag(folder) -> str:
    return hashlib.sha256((Path(folder) / "adapter_model.safetensors").read_bytes()).hexdigest()[:8]


class FakeLLM:
    """Stands in for ``vllm.LLM(enable_lora=True)``, built from `engine_kwargs`.

    Like vLLM, it loads an adapter from its folder on the first request with a new ``lora_int_id``
    and never reads the folder again for that id; beyond ``max_cpu_loras`` loaded adapters it drops
    the least recently used. ``log`` records every ("add" | "remove", id); ``requests`` every
    generate call's (LoRA request or None, number of prompts). Its greedy "answer" to a prompt is
    ``"<weights tag or base> <prompt tokens> and more\nline two\n\nrest"``, cut to ``max_tokens``
    words and at the stop strings, so an answer shows which weights served it and for which prompt.
    """

    def __init__(self, *, enable_lora: bool, max_lora_rank: int, max_cpu_loras: int, **kwargs):
        assert enable_lora
        self.max_lora_rank, self.max_cpu_loras = max_lora_rank, max_cpu_loras
        self.loaded: OrderedDict[int, str] = OrderedDict()  # id -> weights tag, least recently used first
        self.names: dict[str, int] = {}
        self.log: list[tuple[str, int]] = []
        self.requests: list[tuple[FakeLoRARequest | None, int]] = []
        self.shut = False

    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        assert not self.shut and params.n == 1 and params.temperature == 0.0, "the fake only decodes greedily"
        self.requests.append((lora_request, len(prompts)))
        tag = "base"
        if lora_request is not None:
            r = lora_request
            assert r.lora_int_id >= 1 and self.names.setdefault(r.lora_name, r.lora_int_id) == r.lora_int_id
            if r.lora_int_id not in self.loaded:
                rank = json.loads((Path(r.lora_path) / "adapter_config.json").read_text())["r"]
                assert rank <= self.max_lora_rank
                self.loaded[r.lora_int_id] = weights_tag(r.lora_path)
                self.log.append(("add", r.lora_int_id))
                while len(self.loaded) > self.max_cpu_loras:
                    self.log.append(("remove", self.loaded.popitem(last=False)[0]))
            self.loaded.move_to_end(r.lora_int_id)
            tag = self.loaded[r.lora_int_id]
        out = []
        for p in prompts:
            words = f"{tag} {len(p['prompt_token_ids'])} and more\nline two\n\nrest".split(" ")
            text = " ".join(words[:params.max_tokens])
            for s in params.stop:
                text = text.split(s, 1)[0]
            out.append(_Output([_Completion(text)]))
        return out

    def shutdown(self):
        self.shut = True

    def adds(self) -> list[int]:
        return [i for what, i in self.log if what == "add"]


def fake_answerer(tmp_path, tok, *, keep: int = 4, max_cpu_loras: int | None = None, export=None,
                  lora_rank: int = 4) -> VLLMAnswerer:
    settings = AnswerSettings(max_new_tokens=8)
    settings.vllm.keep_adapters, settings.vllm.max_cpu_loras = keep, max_cpu_loras
    settings.vllm.adapter_dir = str(tmp_path)
    llm = FakeLLM(**engine_kwargs("/m", settings.vllm, lora_rank))
    return VLLMAnswerer(llm, tok, settings, sampling_params=FakeSamplingParams, lora_request=FakeLoRARequest,
                        add_special_tokens=True, export=export)


def vllm_student(tiny_model, tmp_path, **kw):
    """A tiny student whose answers come from `VLLMAnswerer` on a `FakeLLM`, as with answer.backend=vllm."""
    from student.model import Student
    from tests.student.test_model import tiny_cfg

    st = Student(tiny_cfg(tiny_model, epochs=1))
    st.answerer = fake_answerer(tmp_path, st.tok, export=st.export_peft, lora_rank=st.cfg.lora.r, **kw)
    return st


def canned(st, tag: str, prompt: str) -> str:
    """The fake engine's first line for ``prompt`` (rendered), served by weights ``tag``."""
    return f"{tag} {len(st.tok(prompt)['input_ids'])} and more"


def slot_id(engine: VLLMAnswerer, slot: int) -> int:
    """The LoRA id the engine's book gave the folder slot's weights are saved in."""
    return dict(engine.book.live())[str(Path(engine._slot_dirs[slot]).resolve())]


QUESTION = "Who kept the light?"


@pytest.mark.parametrize("n, keep, max_cpu_loras", [(50, 4, None), (12, 4, 2)])
def test_many_adaptations_ids_only_grow_and_at_most_keep_adapters_live(tiny_model, tmp_path, n, keep,
                                                                       max_cpu_loras):
    """Train, answer (twice), discard, n times, as a worker does: each adaptation is saved and loaded
    once, under an id larger than every earlier one; each answer comes from that adaptation's own
    weights; at most keep_adapters folders exist and the engine holds at most max_cpu_loras
    (None: keep_adapters) adapters."""
    st = vllm_student(tiny_model, tmp_path, keep=keep, max_cpu_loras=max_cpu_loras)
    engine, llm = st.answerer, st.answerer.llm
    peak_folders = 0
    for i in range(n):
        with st.adapted([f"The lamp was lit by keeper number {i}."], seed=i):
            first, again = st.answer([QUESTION]), st.answer([QUESTION])
            assert first == again == [canned(st, weights_tag(engine._slot_dirs[0]), st.prompt(QUESTION))]
            assert llm.adds()[-1] == slot_id(engine, 0) and len(llm.adds()) == i + 1  # one save and load each
        peak_folders = max(peak_folders, sum(1 for _ in engine.book.root.iterdir()))
        assert len(llm.loaded) <= (max_cpu_loras or keep)
    adds = llm.adds()
    assert adds == sorted(set(adds)) and len(adds) == n
    assert len(set(llm.loaded.values())) == len(llm.loaded)  # no two adaptations served the same weights
    assert peak_folders == keep and len(engine.book.live()) == keep
    assert [i for what, i in llm.log if what == "remove"] == adds[:n - (max_cpu_loras or keep)]
    assert st.answer([QUESTION]) == [canned(st, "base", st.prompt(QUESTION))]  # discarded: the base model


def test_respond_many_one_request_per_slot_rows_in_order(tiny_model, tmp_path):
    """K slots and the base model in one respond_many: one engine call per slot and budget (budgets in
    increasing order, slots in increasing order), each row answered with its own slot's weights, in
    its own place, within its own token budget, cut per the decode rule."""
    from core.domains.knowledge import DECODE
    from core.domains.spec import Decode, Query

    st = vllm_student(tiny_model, tmp_path)
    engine = st.answerer
    st.train_many([["Ada kept the light."], ["Tom kept the light."], ["Eve kept the light."]], [0, 1, 2])
    groups = [[Query("Who?", "", 8), Query("Who kept it, and when?", "", 1)], [Query("What?", "", 8)],
              [Query("Where is it?", "", 8)]]
    got = st.respond_many(groups, DECODE, adapters=[2, -1, 0])
    tag = {s: weights_tag(engine._slot_dirs[s]) for s in (0, 2)} | {-1: "base"}
    assert len(set(tag.values())) == 3  # three different sets of weights
    assert got == [[canned(st, tag[2], st.prompt("Who?")), tag[2]], [canned(st, "base", st.prompt("What?"))],
                   [canned(st, tag[0], st.prompt("Where is it?"))]]
    calls = [(None if r is None else r.lora_int_id, rows) for r, rows in engine.llm.requests]
    assert calls == [(slot_id(engine, 2), 1), (None, 1), (slot_id(engine, 0), 1), (slot_id(engine, 2), 1)]
    raw = st.respond_many([[Query("input: 01", "", 8)]], Decode(style="raw", stop="blank"), adapters=[1])
    assert raw == [[canned(st, weights_tag(engine._slot_dirs[1]), "input: 01") + "\nline two"]]


def test_training_a_slot_again_serves_the_new_weights(tiny_model, tmp_path):
    """A slot whose folder the book evicted (keep_adapters=1) is saved again; weights that change in
    a slot (trained further with fresh=False) are saved again under a new id."""
    from core.domains.knowledge import DECODE
    from core.domains.spec import Query

    st = vllm_student(tiny_model, tmp_path, keep=1)
    llm, q = st.answerer.llm, Query(QUESTION, "", 8)
    specs = [["Ada kept the light."], ["Tom kept the light."]]
    st.train_many(specs, [0, 1])
    a0 = st.respond_many([[q], [q]], DECODE)
    assert len(llm.adds()) == 2 and sum(1 for _ in st.answerer.book.root.iterdir()) == 1  # slot 0's folder evicted
    assert st.respond_many([[q]], DECODE, adapters=[0]) == [a0[0]]  # saved again: same weights, new folder
    assert llm.adds() == [1, 2, 3]
    st.train_many(specs, [0, 1], fresh=False)
    a1 = st.respond_many([[q], [q]], DECODE)
    assert a1[0] != a0[0] and a1[1] != a0[1] and llm.adds() == [1, 2, 3, 4, 5]


def test_an_adapter_overwritten_in_place_is_served_fresh(tiny_model, tmp_path):
    """New weights saved into a folder the engine has already loaded are served (a new id), the same
    as a fresh folder holding them; a folder the book did not make is never deleted."""
    from transformers import AutoTokenizer

    engine = fake_answerer(tmp_path, AutoTokenizer.from_pretrained(tiny_model), keep=1)
    folder, fresh = tmp_path / "inplace", tmp_path / "fresh"
    for f in (folder, fresh):
        f.mkdir()
        (f / "adapter_config.json").write_text(json.dumps({"r": 4}))
    (folder / "adapter_model.safetensors").write_bytes(b"first weights")
    first = engine.answer(["Who?"], str(folder))
    (folder / "adapter_model.safetensors").write_bytes(b"second weights, other bytes")
    second = engine.answer(["Who?"], str(folder))
    (fresh / "adapter_model.safetensors").write_bytes(b"second weights, other bytes")
    assert first != second and second == engine.answer(["Who?"], str(fresh))
    assert second[0].startswith(weights_tag(folder)) and engine.llm.adds() == [1, 2, 3]
    assert folder.exists() and fresh.exists()


def test_vllm_answerer_errors_are_clear(tiny_model, tmp_path):
    """Each refusal names what is wrong and the way out, and none reaches the engine."""
    import torch

    from core.domains.knowledge import DECODE
    from core.domains.spec import Query

    st = vllm_student(tiny_model, tmp_path)
    llm = st.answerer.llm
    with pytest.raises(ValueError, match="train_many first"):  # no trained slot to answer with
        st.respond_many([[Query(QUESTION, "", 8)]], DECODE, adapters=[0])
    st.train(["Ada kept the light."])
    before = [p.detach().clone() for p in st.model.parameters()]
    with pytest.raises(ValueError, match="merging adapters needs student.answer.backend=transformers"):
        st.merge_adapter()
    assert all(torch.equal(a, b) for a, b in zip(before, st.model.parameters()))  # refused before merging
    with pytest.raises(FileNotFoundError, match="save the adapter"):
        st.answerer.answer(["Who?"], str(st.answerer.book.new_folder()))
    no_export = fake_answerer(tmp_path, st.tok)
    with pytest.raises(ValueError, match="pass export=student.export_peft"):
        no_export.run(["Who?"], [0], 4, None)
    assert llm.requests == [] and no_export.llm.requests == []
    st.answer(["Who?"])
    root = st.answerer.book.root
    st.answerer.close()
    assert llm.shut and st.answerer.llm is None and not root.exists()  # engine shut down, adapters deleted


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here: nothing to refuse")
def test_vllm_platform_raises_clear_error_here(tiny_model):
    with pytest.raises(ConfigError, match="student.answer.backend=transformers") as e:
        vllm_platform("student.answer.backend")
    assert str(e.value).startswith("student.answer.backend=vllm needs")
    with pytest.raises(ConfigError, match="student.answer.backend=vllm needs"):
        VLLMAnswerer.start(tiny_model, AnswerSettings(backend="vllm"), lora_rank=16)
    assert "pip install -e '.[gpu]'" in str(e.value) and "make vllm-env" in str(e.value)


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_VLLM and has_gpu()), reason="needs vllm and a CUDA GPU")
def test_vllm_answerer_serves_a_trained_adapter_on_gpu():
    from core import catalog
    from student.model import Student

    cfg = StudentConfig(model="smollm2-135m-instruct")
    cfg.train.epochs = 2
    student = Student(cfg)
    answerer = VLLMAnswerer.start(catalog.resolve(cfg.model), cfg.answer, lora_rank=cfg.lora.r,
                                  add_special_tokens=not student.chat)
    try:
        prompts = [student.prompt(q) for q in ("Who kept the Vell lighthouse?", "When was it lit?")]
        base = answerer.answer(prompts)
        student.train(["The Vell lighthouse was kept by Ada Morrow.", "It was lit in 1871."])
        folder = answerer.save_adapter(lambda d: student.export_peft(0, d))
        adapted = answerer.answer(prompts, folder)
        assert len(base) == len(adapted) == 2 and all("\n" not in a for a in base + adapted)
        assert answerer.book.register(folder) == answerer.book.live()[-1][1]
    finally:
        answerer.close()
