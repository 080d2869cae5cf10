"""Answering through vLLM without vLLM: the engine arguments' checks, the adapter book (ids, LRU
eviction, overwritten folders), and the error a machine without vllm gets. Its behaviour against the
transformers path is tested where vllm runs (tests/with_vllm, `make test-vllm`); the test marked ``gpu``
covers what only CUDA has."""

from __future__ import annotations

import importlib.util

import pytest

from orchestration.core.config import ConfigError
from student.config import AnswerSettings, StudentConfig, VLLMSettings
from orchestration.core.models import vllm_platform
from student.vllm_answer import AdapterBook, VLLMAnswerer, answer_kwargs, engine_kwargs

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def test_answer_kwargs_refuses_no_tokens():
    with pytest.raises(ValueError, match="student.answer.max_new_tokens"):
        answer_kwargs(0)


def test_max_cpu_loras_follows_keep_adapters_and_is_checked():
    assert engine_kwargs("/m", VLLMSettings(keep_adapters=6), lora_rank=16)["max_cpu_loras"] == 6
    assert engine_kwargs("/m", VLLMSettings(max_cpu_loras=3), lora_rank=16)["max_cpu_loras"] == 3
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
    from orchestration.core import catalog
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
