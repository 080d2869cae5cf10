"""The shipped teacher: a trained teacher version in the package, named like a built-in."""

import json
from pathlib import Path

from teacher.versions import MANIFEST, load_teacher


def test_the_shipped_teacher_loads_by_name_as_its_base_plus_its_adapter():
    """`seal-teacher-smollm2` (catalog.TEACHERS): accepted wherever a teacher is named, and loaded as
    smollm2-135m-instruct with the shipped bf16 LoRA adapter merged in; its tokenizer is the base's."""
    import torch

    from core.catalog import TEACHERS, check_model, teacher_path
    from core.models import load_model
    from teacher.config import TeacherConfig
    from teacher.prompts import prompt_tokenizer

    name = "seal-teacher-smollm2"
    assert name in TEACHERS
    manifest = json.loads((Path(teacher_path(name)) / MANIFEST).read_text())
    assert manifest["save"] == "adapter" and manifest["parent"] == "smollm2-135m-instruct"
    check_model(name, "teacher.model")
    cpu = torch.device("cpu")
    shipped, tok = load_teacher(name, device=cpu)
    base, base_tok = load_model("smollm2-135m-instruct", device=cpu)
    changed = [n for n, p in shipped.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert changed and all(any(t in n for t in manifest["sft"]["target_modules"]) for n in changed)
    assert tok.get_vocab() == base_tok.get_vocab()
    tok2, chat = prompt_tokenizer(TeacherConfig(model=name))
    assert chat and tok2.get_vocab() == base_tok.get_vocab()
