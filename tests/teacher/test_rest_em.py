"""The ReST^EM update on tiny in-process models: it trains on exactly the rewarded edits, only on
their edit tokens, raises their likelihood, and saves versions that load (merged and adapter chains)."""

import shutil
from pathlib import Path

import pytest

from core.contexts import load_contexts
from teacher.config import TeacherConfig
from teacher.prompts import render, tokenize_prompt
from teacher.rest_em import SFTExample, build_dataset, build_trainer, loglik, sft_update
from teacher.versions import MANIFEST, load_teacher

REWARDED = ["e0", "e2", "e4"]  # 3 of the 6 edits below "raised a student's score"


def make_examples(tok, chat: bool) -> list[SFTExample]:
    """Six (prompt, edit) pairs from the demo passages; the edit restates two facts of its passage."""
    out = []
    for i, c in enumerate(load_contexts("demo")[:6]):
        prompt = render("implications", {}, c.title, c.context, tok, chat)
        edit = " ".join(f"{q.question} {q.answer}." for q in c.questions[:2])
        out.append(SFTExample(f"e{i}", prompt, edit, chat))
    return out


def tiny_cfg(model: str, save: str = "merged", epochs: int = 2, lr: float = 2e-2) -> TeacherConfig:
    cfg = TeacherConfig(model=model, threads=1)
    s = cfg.sft
    s.save, s.epochs, s.learning_rate, s.batch_size, s.lora_r, s.lora_alpha = save, epochs, lr, 3, 8, 16
    return cfg


def pick(examples, ids):
    return [e for e in examples if e.edit_id in ids]


@pytest.fixture(scope="module")
def merged_update(tiny_model, tmp_path_factory):
    """One merged update of the base tiny model on the rewarded edits, with log-likelihoods before/after."""
    base, tok = load_teacher(tiny_model)
    examples = make_examples(tok, chat=False)
    before = loglik(base, tok, examples)
    out = tmp_path_factory.mktemp("ckpt") / "v1"
    # Enough steps at a high rate that memorising the 3 edits clearly outpaces the shared format.
    manifest = sft_update(tiny_model, pick(examples, REWARDED), tiny_cfg(tiny_model, epochs=15), out,
                          manifest={"round": 1})
    return examples, before, out, manifest


def test_trains_on_exactly_the_rewarded_edits(merged_update, tiny_model):
    examples, _, out, manifest = merged_update
    assert manifest["edit_ids"] == REWARDED and manifest["n_examples"] == 3
    assert manifest["round"] == 1 and manifest["save"] == "merged" and manifest["seed"] == 0
    assert manifest["parent"] == str(Path(tiny_model).resolve())
    assert manifest["sft"]["steps"] == 15  # 15 epochs x one batch of 3
    assert manifest["sft"]["train_loss"] > 0 and len(manifest["sft"]["log"]) == 15
    _, tok = load_teacher(tiny_model)
    ds = build_dataset(tok, pick(examples, REWARDED), 1024)
    assert ds["edit_id"] == REWARDED


@pytest.mark.parametrize("chat", [False, True])
def test_completion_mask_covers_exactly_the_edit(tiny_model, tiny_chat_model, chat):
    _, tok = load_teacher(tiny_chat_model if chat else tiny_model)
    examples = make_examples(tok, chat)
    ds = build_dataset(tok, examples, 1024)
    assert ds["edit_id"] == [e.edit_id for e in examples]
    for ex, ids, mask in zip(examples, ds["input_ids"], ds["completion_mask"]):
        prompt = tokenize_prompt(tok, ex.prompt, chat)
        edit = tok(ex.completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ids == prompt + edit
        assert mask == [0] * len(prompt) + [1] * len(edit)
    # An edit cut at the token limit gets no end token.
    cut = build_dataset(tok, [SFTExample("x", "P", "an edit", chat, finished=False)], 1024)
    assert cut["input_ids"][0][-1] != tok.eos_token_id and cut["completion_mask"][0][-1] == 1


def test_truncation_keeps_the_start_and_drops_rows_without_edit_tokens(tiny_model):
    _, tok = load_teacher(tiny_model)
    ex = make_examples(tok, chat=False)[0]
    n_prompt = len(tokenize_prompt(tok, ex.prompt, False))
    ds = build_dataset(tok, [ex], n_prompt + 3)
    assert ds["completion_mask"][0] == [0] * n_prompt + [1] * 3
    assert len(build_dataset(tok, [ex], n_prompt)) == 0  # the prompt fills max_length: no loss left


def test_trl_labels_mask_prompt_and_padding(tiny_model, tmp_path):
    """What the trainer actually feeds the model: labels -100 on prompt and pads, ids on the edit."""
    import torch

    model, tok = load_teacher(tiny_model)
    examples = pick(make_examples(tok, chat=False), REWARDED)
    ds = build_dataset(tok, examples, 1024)
    trainer = build_trainer(model, tok, ds, tiny_cfg(tiny_model).sft, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))  # batch_size 3: every row, shuffled
    assert set(batch) >= {"input_ids", "labels", "attention_mask"} and "edit_id" not in batch
    rows = {tuple(ids): mask for ids, mask in zip(ds["input_ids"], ds["completion_mask"])}
    seen = set()
    for inp, labels, att in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        n = int(att.sum())
        ids = tuple(inp[:n].tolist())
        mask = torch.tensor(rows[ids], dtype=torch.bool)
        assert torch.equal(labels[:n][mask], inp[:n][mask])
        assert (labels[:n][~mask] == -100).all() and (labels[n:] == -100).all()
        seen.add(ids)
    assert len(seen) == 3


def test_update_raises_likelihood_of_rewarded_edits_more(merged_update):
    examples, before, out, _ = merged_update
    model, tok = load_teacher(str(out))  # a merged version is a plain checkpoint folder
    after = loglik(model, tok, examples)
    gain = {e.edit_id: a - b for e, a, b in zip(examples, after, before)}
    trained = [gain[i] for i in REWARDED]
    others = [g for i, g in gain.items() if i not in REWARDED]
    assert min(trained) > 0.1, gain
    assert min(trained) > max(others), gain


def test_merged_version_is_atomic_and_complete(merged_update):
    _, _, out, _ = merged_update
    assert not list(out.parent.glob(".tmp-*"))
    names = {p.name for p in out.iterdir()}
    assert {MANIFEST, "config.json", "model.safetensors", "tokenizer.json"} <= names
    assert '"use_cache": true' in (out / "config.json").read_text()  # Trainer's training switch undone


def test_adapter_chain_loads_and_matches_merged(tiny_chat_model, tmp_path):
    import torch

    base, tok = load_teacher(tiny_chat_model)
    examples = make_examples(tok, chat=True)
    ckpt = tmp_path / "checkpoints"
    a1 = sft_update(tiny_chat_model, pick(examples, REWARDED), tiny_cfg(tiny_chat_model, "adapter"), ckpt / "v1")
    m1 = sft_update(tiny_chat_model, pick(examples, REWARDED), tiny_cfg(tiny_chat_model, "merged"), tmp_path / "m1")
    a2 = sft_update(str(ckpt / "v1"), pick(examples, ["e1", "e3"]), tiny_cfg(tiny_chat_model, "adapter"), ckpt / "v2")
    assert a1["save"] == "adapter" and a2["parent"] == "../v1" and a2["edit_ids"] == ["e1", "e3"]
    assert "model.safetensors" not in {p.name for p in (ckpt / "v1").iterdir()}
    assert m1["edit_ids"] == a1["edit_ids"]
    shutil.move(ckpt, tmp_path / "moved")  # the chain is recorded relative to the checkpoints folder

    inp = torch.tensor([tokenize_prompt(tok, examples[0].prompt, True)])
    logits = {}
    for name, path in [("base", tiny_chat_model), ("v1", tmp_path / "moved/v1"), ("m1", tmp_path / "m1"),
                       ("v2", tmp_path / "moved/v2")]:
        lm, _ = load_teacher(str(path))
        with torch.no_grad():
            logits[name] = lm(input_ids=inp).logits
    # Same seed and data: the adapter version rebuilt through its chain is the merged version.
    assert torch.allclose(logits["v1"], logits["m1"], atol=1e-5)
    assert not torch.allclose(logits["v1"], logits["base"], atol=1e-4)
    assert not torch.allclose(logits["v2"], logits["v1"], atol=1e-4)


def test_no_rewarded_edit_is_an_error(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        sft_update(tiny_model, [], tiny_cfg(tiny_model), tmp_path / "v1")
    assert not (tmp_path / "v1").exists()


def test_existing_version_is_refused(tiny_model, tmp_path):
    (tmp_path / "v1").mkdir()
    with pytest.raises(FileExistsError):
        sft_update(tiny_model, [SFTExample("e", "P", "x", False)], tiny_cfg(tiny_model), tmp_path / "v1")


def test_crash_leaves_no_partial_version(tiny_model, tmp_path, monkeypatch):
    import teacher.rest_em as rest_em

    def boom(*a, **k):
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(rest_em, "build_trainer", boom)
    with pytest.raises(RuntimeError):
        sft_update(tiny_model, [SFTExample("e", "P", "x", False)], tiny_cfg(tiny_model), tmp_path / "v1")
    assert list(tmp_path.iterdir()) == []
