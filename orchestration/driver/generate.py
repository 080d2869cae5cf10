"""`seal generate`: a teacher writes edits for any SEAL/SQuAD-schema file, into a SEAL-format edits file.

This is what makes a trained teacher reusable outside the loop: the file feeds `seal adapt
edits=FILE`, `seal evaluate edits=FILE`, or anyone else's pipeline. Its header names the teacher
(model, version, template, chat) and the sampling settings; each record keeps the exact prompt.

Edits are generated in chunks and each finished chunk is appended to ``OUT.partial.jsonl``, so an
interrupted run resumes there; the final file is written atomically and the partial file removed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from orchestration.core.config import ConfigError, DataConfig
from orchestration.core.edits import FORMAT
from orchestration.core.models import trim_cpu_memory
from orchestration.core.runs import append_jsonl, read_jsonl
from teacher.config import TeacherConfig


@dataclass
class GenerateConfig:
    """Config of `seal generate` (configs/generate_demo.yaml)."""

    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """``teacher.model`` may be a run's checkpoints/v{n} folder, a built-in name, a folder or a hub id."""
    data: DataConfig = field(default_factory=DataConfig)
    """The contexts to write edits for (their questions are never shown to the teacher)."""
    out: str = "???"
    """Path of the SEAL-format edits file to write (JSON)."""
    edits_per_context: int = 1
    """Edits per context: 1 greedy edit, or this many sampled ones when ``sample`` is true."""
    sample: bool = False
    """Sample with teacher.generation's temperature/top_p instead of greedy decoding."""
    chunk_contexts: int = 16
    """Contexts per generate call; each finished chunk is saved, so a crash loses at most one."""
    models_cache: Optional[str] = None
    """Folder of materialised built-in models (default: $SEAL_MODEL_CACHE or the user cache dir)."""


def teacher_version(model: str) -> int:
    """The version number of a checkpoints/v{n} folder (from its manifest); 0 for anything else."""
    from teacher.versions import read_manifest

    folder = Path(model).expanduser()
    manifest = read_manifest(folder) if folder.is_dir() else None
    return int(manifest.get("version", 0)) if manifest else 0


def run_generate(cfg: GenerateConfig, resolved=None) -> Path:
    """Write ``cfg.out``; returns its path. (``resolved`` is unused: the output's header is its record.)"""
    from teacher.generate import make_backend
    from teacher.prompts import render, template_text

    if cfg.edits_per_context < 1 or (not cfg.sample and cfg.edits_per_context != 1):
        raise ConfigError(f"edits_per_context={cfg.edits_per_context}: use 1 for greedy edits, or set "
                          f"sample=true for several sampled edits per context")
    if cfg.teacher.generation.constrain:
        raise ConfigError("teacher.generation.constrain=true: `seal generate` writes knowledge edits (free text, "
                          "no finite format); set teacher.generation.constrain=false")
    try:
        template_text(cfg.teacher.prompt, cfg.teacher.templates)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    d = cfg.data
    contexts = d.load()
    out = Path(cfg.out)
    partial = out.with_name(out.name + ".partial.jsonl")
    done = {r["context_id"]: r for r in map(json.loads, read_jsonl(partial))}
    todo = [c for c in contexts if c.context_id not in done]
    g = cfg.teacher.generation
    sampling = {"greedy": not cfg.sample, "temperature": g.temperature, "top_p": g.top_p,
                "max_new_tokens": g.max_new_tokens, "seed": g.seed}
    if todo:
        backend = make_backend(cfg.teacher.model, cfg.teacher, cache=cfg.models_cache)
        try:
            for start in range(0, len(todo), cfg.chunk_contexts):
                chunk = todo[start:start + cfg.chunk_contexts]
                prompts = [render(cfg.teacher.prompt, cfg.teacher.templates, c.title, c.context, backend.tokenizer,
                                  backend.chat) for c in chunk]
                outs = backend.generate(prompts, cfg.edits_per_context, greedy=not cfg.sample, seed=g.seed + start)
                for c, prompt, gens in zip(chunk, prompts, outs):
                    rec = {"title": c.title, "context": c.context, "context_id": c.context_id, "chat": backend.chat,
                           "prompt": prompt, "completions": [x.text for x in gens],
                           "finished": [x.finished for x in gens]}
                    append_jsonl(partial, json.dumps(rec))
                    done[c.context_id] = rec
        finally:
            backend.close()
            trim_cpu_memory()
    header = {"format": FORMAT, "teacher": {"model": cfg.teacher.model, "version": teacher_version(cfg.teacher.model),
                                            "template": cfg.teacher.prompt},
              "sampling": sampling, "data": {"source": d.source, "shuffle_seed": d.shuffle_seed, "offset": d.offset,
                                             "limit": d.limit}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({**header, "records": [done[c.context_id] for c in contexts]}, indent=1))
    os.replace(tmp, out)
    partial.unlink(missing_ok=True)
    print(f"{len(contexts)} contexts x {cfg.edits_per_context} edit(s) -> {out}")
    return out
