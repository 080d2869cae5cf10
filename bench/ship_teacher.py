"""Ship a trained teacher version as a small LoRA adapter over its base. Prints JSON.

A ReST^EM version saved merged (`teacher.sft.save: merged`) is a full checkpoint: v0's weights
plus the merged LoRA update, which is of rank ``lora_r`` in every adapted linear layer. This
recovers that update exactly (up to float rounding) by a randomised SVD of (version - base) per
layer, writes it as a PEFT adapter in bf16 with a version manifest naming the base as its parent
(`teacher.versions`: loads like any adapter version), and checks the result against the merged
version: the largest logit difference on the given passages' canonical prompts, and whether the
greedy edits agree.

    python bench/ship_teacher.py bench/out/rest_em/train/checkpoints/v2 \
        core/teachers/seal-teacher-smollm2 --about about.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from _common import machine_record, squad_subset


def extract(merged: Path, out: Path, about: dict) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from core.models import load_model
    from teacher.versions import read_manifest

    manifest = read_manifest(merged)
    sft = manifest["sft"]
    r, alpha, targets = sft["lora_r"], sft["lora_alpha"], sft["target_modules"]
    base, _ = load_model(manifest["parent"], device=torch.device("cpu"))
    tuned, _ = load_model(str(merged), device=torch.device("cpu"))
    tuned_w = dict(tuned.named_parameters())
    untouched = [n for n, p in base.named_parameters()
                 if not any(f"{t}." in n for t in targets) and not torch.equal(p, tuned_w[n])]
    if untouched:
        raise SystemExit(f"{merged}: weights outside the LoRA targets changed ({untouched[:3]}...); not a LoRA version")
    peft = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
                                           task_type="CAUSAL_LM"))
    scale, worst = alpha / r, 0.0
    with torch.no_grad():
        for name, module in peft.named_modules():
            if not hasattr(module, "lora_A") or "default" not in module.lora_A:
                continue
            plain = name.removeprefix("base_model.model.") + ".weight"
            w0 = module.base_layer.weight.double()
            delta = tuned_w[plain].double() - w0
            u, s, v = torch.svd_lowrank(delta, q=r + 8, niter=4)  # exact up to rounding: the rank is <= r
            root = (s[:r] / scale).sqrt()
            b, a = u[:, :r] * root, root[:, None] * v[:, :r].T
            worst = max(worst, ((scale * b @ a - delta).abs().max() / delta.abs().max().clamp_min(1e-30)).item())
            module.lora_B["default"].weight.copy_(b.to(torch.bfloat16))
            module.lora_A["default"].weight.copy_(a.to(torch.bfloat16))
    peft = peft.to(torch.bfloat16)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    peft.save_pretrained(tmp)
    (tmp / "manifest.json").write_text(json.dumps({
        "save": "adapter", "parent": manifest["parent"], "version": manifest["version"], "dtype": "bf16",
        "sft": {k: sft[k] for k in ("lora_r", "lora_alpha", "target_modules", "epochs", "learning_rate", "steps",
                                    "train_loss")},
        "rewards": manifest["rewards"], "edit_ids": manifest["edit_ids"], **about}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {"rank": r, "svd_relative_error_max": worst,
            "adapter_bytes": sum(f.stat().st_size for f in out.iterdir() if f.suffix == ".safetensors")}


def check(merged: Path, out: Path, passages: int) -> dict:
    """The shipped adapter against the merged version: logits and greedy edits on passages 281-.."""
    import torch

    from core.models import load_model
    from teacher.config import TeacherConfig
    from teacher.prompts import render
    from teacher.versions import load_teacher

    models = {"merged": load_model(str(merged), device=torch.device("cpu")), "shipped": load_teacher(str(out), device=torch.device("cpu"))}
    cfg = TeacherConfig()
    ctxs = squad_subset(280, passages)
    diff, same, edits = 0.0, 0, {}
    for c in ctxs:
        outs = {}
        for name, (m, tok) in models.items():
            prompt = render("implications", cfg.templates, c.title, c.context, tok, True)
            ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                outs[name] = (m(**ids).logits[0, -1].float(),
                              tok.decode(m.generate(**ids, max_new_tokens=192, do_sample=False)[0, ids.input_ids.shape[1]:],
                                         skip_special_tokens=True))
        diff = max(diff, (outs["merged"][0] - outs["shipped"][0]).abs().max().item())
        same += outs["merged"][1] == outs["shipped"][1]
        edits[c.context_id] = {k: v[1] for k, v in outs.items()}
    return {"passages": len(ctxs), "max_abs_logit_diff_next_token": diff, "greedy_edits_identical": same,
            "example": next(iter(edits.values()))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("merged", type=Path, help="a merged version folder (checkpoints/v{n})")
    ap.add_argument("out", type=Path, help="the adapter folder to write")
    ap.add_argument("--about", type=Path, help="a JSON object of provenance to put into the manifest")
    ap.add_argument("--check-passages", type=int, default=5, help="between-round passages 281.. to compare on")
    args = ap.parse_args(argv)
    about = json.loads(args.about.read_text()) if args.about else {}
    out = {"command": " ".join(["python bench/ship_teacher.py", *(argv or sys.argv[1:])]), "machine": machine_record(),
           **extract(args.merged, args.out, about), "check": check(args.merged, args.out, args.check_passages)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
