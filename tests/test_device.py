"""The device setting (`student.device`, `teacher.device`): 'cpu' keeps the model, the dtype choice
and the attention kernel on the CPU even where torch reports a GPU; 'auto' keeps the old behaviour
(the GPU when there is one); a GPU that is not there is refused naming the key.

The GPU is faked by monkeypatching ``torch.cuda.is_available``: with 'cpu', nothing may ask CUDA
anything else (the fake has no device to answer), so a forgotten ``torch.cuda`` call fails here.
"""

from __future__ import annotations

import pytest

from core.config import ConfigError
from core.models import autocast_dtype, default_attention, fast_cpu_bf16, resolve_device
from student.config import StudentConfig
from teacher.config import TeacherConfig


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch says it sees a GPU (and one only); bf16 on it."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_auto_means_the_gpu_where_torch_sees_one(fake_gpu):
    import torch

    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"student.device=cuda:1: torch sees 1 GPU\(s\)"):
        resolve_device("cuda:1", "student.device")


def test_a_missing_gpu_or_an_unknown_device_is_refused_naming_the_key(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="teacher.device=cuda: torch sees no CUDA GPU here; set teacher.device: cpu"):
        resolve_device("cuda", "teacher.device")
    for bad in ("gpu", "cuda:x", "CPU", "cuda:"):
        cfg = StudentConfig(device=bad)
        with pytest.raises(ConfigError, match=f"students.0.device='{bad}' is unknown; use 'auto', 'cpu'"):
            cfg.check("students.0")
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES=1 and set teacher.device: cuda"):
        TeacherConfig(device="cuda:1").check()
    TeacherConfig(device="cuda:0").check()


def test_dtype_auto_follows_the_device(fake_gpu, monkeypatch):
    import torch

    cpu_choice = torch.bfloat16 if fast_cpu_bf16() else None
    assert autocast_dtype("auto", device=torch.device("cpu")) == cpu_choice
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: not cpu_choice)
    monkeypatch.setattr(torch.cuda, "device", lambda d: __import__("contextlib").nullcontext())
    # on the (fake) GPU the answer is the GPU's, here the opposite of the CPU's: the two are told apart
    assert autocast_dtype("auto", device=torch.device("cuda")) == (None if cpu_choice else torch.bfloat16)


def test_student_on_cpu_stays_on_the_cpu_where_a_gpu_is_reported(fake_gpu, tiny_model):
    import torch

    from student.model import Student
    from tests.student.test_model import tiny_cfg

    cfg = tiny_cfg(tiny_model, dtype="auto")
    cfg.device = "cpu"
    st = Student(cfg)
    assert st.device == torch.device("cpu") and st.model.device == torch.device("cpu")
    assert st.dtype == (torch.bfloat16 if fast_cpu_bf16() else None)
    assert st.model.config._attn_implementation == "eager"
    stats = st.train(["A lighthouse stands on Vell."])  # trains and answers there too
    assert stats.steps == 2 and st.trainer.bank.flat.device == torch.device("cpu")
    assert len(st.answer(["Where is the lighthouse?"])) == 1


def test_teacher_on_cpu_stays_on_the_cpu_where_a_gpu_is_reported(fake_gpu, tiny_model, tmp_path):
    import torch

    from teacher.transformers_backend import TransformersBackend
    from teacher.rest_em import build_dataset, build_trainer
    from tests.teacher.test_rest_em import REWARDED, make_examples, pick

    cfg = TeacherConfig(model=tiny_model, device="cpu")
    backend = TransformersBackend(tiny_model, cfg)
    assert backend.model.device == torch.device("cpu")
    assert backend.dtype == (torch.bfloat16 if fast_cpu_bf16() else None)
    assert default_attention(torch.device("cpu")) == "eager"  # what sft_update loads its model with there
    examples = pick(make_examples(backend.tokenizer, chat=False), REWARDED)
    trainer = build_trainer(backend.model, backend.tokenizer, build_dataset(backend.tokenizer, examples, 1024),
                            cfg.sft, tmp_path, torch.device("cpu"))
    assert trainer.args.use_cpu and not trainer.args.bf16 and trainer.args.device == torch.device("cpu")
