"""Run folders: one folder per run holding its resolved config, provenance and append-only results.

Rows are appended and fsynced one at a time, so a crash loses at most the row being written, and
running the same command on the same folder resumes: the caller skips the keys already present. A
resume with a different config is refused, listing the keys that differ.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from orchestration.core.config import ConfigError, diff_keys

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
    return {"git_commit": _git_commit(), "python": platform.python_version(), "packages": versions,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def open_run(command: str, run_dir: str | None, cfg, extra: dict | None = None) -> Path:
    """Create (or reopen for resume) a run folder and save the resolved config ``cfg`` (a DictConfig).

    ``extra`` goes into the manifest next to the provenance (e.g. model checksums and seeds)."""
    from omegaconf import OmegaConf

    path = Path(run_dir) if run_dir else default_run_dir(command)
    saved = path / CONFIG_FILE
    current = OmegaConf.to_container(cfg)
    current.pop("run_dir", None)
    if saved.is_file():
        before = OmegaConf.to_container(OmegaConf.load(saved))
        before.pop("run_dir", None)
        changed = diff_keys(before, current)
        if changed:
            raise ConfigError(f"{path} holds a run with a different config (keys: {', '.join(changed)}); "
                              f"resume with the same config or choose a new run_dir=PATH")
        return path
    path.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, saved)
    (path / MANIFEST_FILE).write_text(json.dumps({"command": command, **provenance(), **(extra or {})},
                                                          indent=1))
    return path


def append_jsonl(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_json(path: str | Path, error: type[Exception], missing: str):
    """A JSON file's content; a missing file raises ``error`` ending with ``missing`` (the fix), bad
    JSON raises ``error`` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise error(missing.format(path=p))
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{p}: not valid JSON ({e})") from e


def read_jsonl(path: Path) -> list[str]:
    """Complete lines of a JSONL file. A torn last line (a crash mid-write) is cut off the file,
    so that the next append starts on a clean line."""
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
                path.write_text("".join(x + "\n" for x in out))
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON; the file was edited by hand?")
        out.append(line)
    return out
