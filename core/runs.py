"""Run folders: one folder per run holding its config, provenance and append-only results.

Rows are appended and fsynced one at a time, so a crash loses at most the row being written, and
running the same command on the same folder resumes: the caller skips the keys already present. A
resume with a different config is refused, listing the keys that differ. The config is saved as
written, interpolations unresolved, so a ``${oc.env:VAR}`` value (an API key, a token) never
reaches the disk; resume compares that same form.

A file that is rewritten whole (a summary, a report, a repaired JSONL) goes through
`write_atomic`: a crash at any moment leaves the old content or the new, never an empty or
partial file.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
import uuid
from importlib import metadata
from pathlib import Path

from core import console
from core.config import ConfigError, diff_keys

CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "omegaconf")


def default_run_dir(command: str) -> Path:
    return Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    from core.models import machine

    return {"git_commit": _git_commit(), "python": platform.python_version(), "packages": versions,
            "machine": machine(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def open_run(command: str, run_dir: str | None, cfg, extra: dict | None = None) -> Path:
    """Create (or reopen for resume) a run folder and save the config ``cfg`` (a DictConfig, as
    `load_config` returns it: interpolations unresolved).

    ``extra`` goes into the manifest next to the provenance (e.g. model checksums and seeds)."""
    from omegaconf import OmegaConf

    path = Path(run_dir) if run_dir else default_run_dir(command)
    saved = path / CONFIG_FILE
    current = OmegaConf.to_container(cfg, enum_to_str=True)  # the YAML holds enum names
    current.pop("run_dir", None)
    if saved.is_file():
        before = OmegaConf.to_container(OmegaConf.load(saved), enum_to_str=True)
        before.pop("run_dir", None)
        changed = diff_keys(before, current)
        if changed:
            raise ConfigError(f"{path} holds a run with a different config (keys: {', '.join(changed)}); "
                              f"resume with the same config or choose a new run_dir=PATH")
        console.attach(path / console.LOG_NAME)
        print(resuming_note(path), flush=True)
        return path
    path.mkdir(parents=True, exist_ok=True)
    console.attach(path / console.LOG_NAME)  # the libraries' output, under `seal` (console.quiet)
    # config.yaml last: it marks the folder as a run, so a crash in between leaves a fresh folder
    write_atomic(path / MANIFEST_FILE, json.dumps({"command": command, **provenance(), **(extra or {})}, indent=1))
    write_atomic(saved, OmegaConf.to_yaml(cfg))
    return path


def resuming_note(path: Path) -> str:
    """What a resumed run says first: which folder, and the commit and time it was started at (a
    resume runs today's code on a folder an older commit may have begun)."""
    try:
        made = json.loads((path / MANIFEST_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        made = {}
    commit, now = made.get("git_commit"), _git_commit()
    same = "" if commit is None or commit == now else f"; this is commit {(now or 'unknown')[:12]}"
    return (f"resuming {path}: a run made at commit {(commit or 'unknown')[:12]} on {made.get('started', '?')}{same} "
            f"(delete the folder, or give another run_dir=PATH, to start afresh)")


def write_atomic(path: str | Path, text: str) -> None:
    """Replace the file ``path`` by ``text``: a crash at any moment leaves the old file or the new one.

    A temp file in the same folder (a rename never crosses file systems) is written and fsynced,
    renamed over ``path``, and the folder is fsynced so that the rename itself is on disk."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        # os.open with 0o666: the new file gets the umask's permissions (mkstemp would give 0600)
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def append_jsonl(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_text(path: str | Path, error: type[Exception], missing: str) -> str:
    """A UTF-8 text file's content; a missing file raises ``error`` ending with ``missing`` (the fix),
    a file that is not UTF-8 (a UTF-16 export, a binary) raises ``error`` naming the file and byte."""
    p = Path(path)
    if not p.is_file():
        raise error(missing.format(path=p))
    try:
        return p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                    f"save the file as UTF-8") from e


def read_json(path: str | Path, error: type[Exception], missing: str):
    """A JSON file's content; a missing file raises ``error`` ending with ``missing`` (the fix), a file
    that is not UTF-8 or not JSON raises ``error`` naming the file."""
    text = read_text(path, error, missing)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{Path(path)}: not valid JSON ({e})") from e


def read_jsonl(path: Path) -> list[str]:
    """Complete lines of a JSONL file. A torn last line (a crash mid-write) is cut off the file
    (atomically: a crash while cutting keeps the old file), so that the next append starts on a
    clean line. The caller restores what the torn line held (e.g. from the queue's ledger)."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                write_atomic(path, "".join(x + "\n" for x in out))
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON; the file was edited by hand?")
        out.append(line)
    return out
