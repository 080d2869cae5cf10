"""`seal generate`: a teacher writes edits for any SEAL/SQuAD-schema file, into a SEAL-format edits file.

This is what makes a trained teacher reusable outside the loop: the file feeds `seal evaluate
edits=FILE` (its `file` condition), or anyone else's pipeline. Its header names the teacher
(model, version, template, chat) and the sampling settings; each record keeps the exact prompt.

Edits are generated in fixed chunks (`teacher.writer.write_edits`, the seeding every command shares) and
each finished chunk is appended to ``OUT.partial.jsonl``, so an interrupted run resumes there. The
partial file's first line records the config that made it; a resume with another config is refused,
naming the keys that differ. The final file is written atomically and the partial file removed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from core import console, domains
from core.catalog import cache_dir, check_model
from core.config import ConfigError, DataConfig, at, diff_keys
from core.edits import FORMAT
from core.models import trim_cpu_memory
from core.records import Purpose
from core.runs import append_jsonl, read_jsonl, write_atomic
from orchestration.keys import EditId
from teacher.config import TeacherConfig
from teacher.writer import WantedEdit, write_edits


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
    models_cache: Optional[str] = None
    """Folder of materialised built-in models (default: $SEAL_MODEL_CACHE or the user cache dir)."""

    def check(self, key: str = "") -> None:
        """Every value and the teacher's model, before any work."""
        self.teacher.check(at(key, "teacher"))
        self.data.check(at(key, "data"))
        if self.edits_per_context < 1 or (not self.sample and self.edits_per_context != 1):
            raise ConfigError(f"{at(key, 'edits_per_context')}={self.edits_per_context}: use 1 for greedy edits, "
                              f"or set sample=true for several sampled edits per context")
        if self.data.domain != "knowledge":
            raise ConfigError(f"{at(key, 'data.domain')}={self.data.domain}: `seal generate` writes knowledge edits "
                              f"files only; ARC edits are written and scored by `seal train` and `seal evaluate` "
                              f"(condition 'teacher'), and an ARC edits file for the 'file' condition is a JSON "
                              f"list of {{task_id, completions}}")
        if self.teacher.generation.constrain:
            raise ConfigError(f"{at(key, 'teacher.generation.constrain')}=true: `seal generate` writes knowledge "
                              f"edits (free text, no finite format); set teacher.generation.constrain=false")
        check_model(self.teacher.model, at(key, "teacher.model"), cache_dir(self.models_cache))


def teacher_version(model: str) -> int:
    """The version number of a checkpoints/v{n} folder (from its manifest); 0 for anything else."""
    from teacher.versions import read_manifest

    folder = Path(model).expanduser()
    manifest = read_manifest(folder) if folder.is_dir() else None
    return int(manifest.get("version", 0)) if manifest else 0


def run_generate(cfg: GenerateConfig, resolved=None) -> Path:
    """Write ``cfg.out``; returns its path. (``resolved`` is unused: the output's header is its record.)"""
    from teacher.transformers_backend import make_backend
    from teacher.writer import check_prompts

    cfg.check()
    d = cfg.data
    contexts = domains.load_data(d, "data")
    check_prompts(cfg.teacher, d.domain, cfg.models_cache, "teacher", {"data": contexts})
    out = Path(cfg.out)
    partial = out.with_name(out.name + ".partial.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    console.attach(out.with_name(out.name + ".log"))  # the libraries' output, under `seal` (console.quiet)
    made_by = _made_by(cfg)
    lines = [json.loads(x) for x in read_jsonl(partial)]
    if lines:
        changed = diff_keys(lines[0].get("made_by", {}), made_by)
        if changed:
            raise ConfigError(f"{partial} was written by a different config (keys: {', '.join(changed)}); "
                              f"rerun with that config to finish it, or delete it to start afresh")
    else:
        append_jsonl(partial, json.dumps({"made_by": made_by}))
    done = {r["context_id"]: r for r in lines[1:]}
    n = cfg.edits_per_context
    wanted = [WantedEdit(str(EditId(c.context_id, i)), c, Purpose.generate, i) for c in contexts for i in range(n)]
    have = {f"{cid}/{i}" for cid in done for i in range(n)}
    g = cfg.teacher.generation
    if len(have) < len(wanted):
        backend = make_backend(cfg.teacher.model, cfg.teacher, cache=cfg.models_cache)

        def save(rows, sampling):
            for k in range(0, len(rows), n):  # a context's n samples are consecutive in its chunk
                c, prompt = rows[k][0].context, rows[k][1]
                if c.context_id in done:
                    continue
                gens = [g for _, _, g in rows[k:k + n]]
                done[c.context_id] = {"title": c.title, "context": c.context, "context_id": c.context_id,
                                      "chat": backend.chat, "prompt": prompt, "completions": [x.text for x in gens],
                                      "finished": [x.finished for x in gens], "seed": sampling["seed"]}
            append_jsonl(partial, "\n".join(json.dumps(done[r[0].context.context_id]) for r in rows[::n]))

        try:
            write_edits(backend, cfg.teacher, domains.get(d.domain), wanted, have, save, greedy=lambda _: not cfg.sample)
        finally:
            backend.close()
            trim_cpu_memory()
    header = {"format": FORMAT, "teacher": {"model": cfg.teacher.model, "version": teacher_version(cfg.teacher.model),
                                            "template": cfg.teacher.prompt},
              "sampling": {"greedy": not cfg.sample, "temperature": g.temperature, "top_p": g.top_p,
                           "max_new_tokens": g.max_new_tokens, "seed": g.seed},
              "data": {"source": d.source, "shuffle_seed": d.shuffle_seed, "offset": d.offset, "limit": d.limit}}
    write_atomic(out, json.dumps({**header, "records": [done[c.context_id] for c in contexts]}, indent=1))
    partial.unlink(missing_ok=True)
    print(f"{len(contexts)} contexts x {n} edit(s) -> {out}")
    return out


def _made_by(cfg: GenerateConfig) -> dict:
    """What a partial file's records depend on; a resume with anything else different is refused."""
    from dataclasses import asdict

    keep = asdict(cfg)
    for k in ("out", "models_cache"):
        keep.pop(k)
    for k in ("threads", "sft"):
        keep["teacher"].pop(k)
    return json.loads(json.dumps(keep, default=str))
