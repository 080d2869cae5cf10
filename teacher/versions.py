"""Teacher versions on disk: loading one, listing them, and deleting old ones.

Version 0 is the configured model (a built-in name, folder or hub id). ReST^EM round n writes
``checkpoints/v{n}`` (see `teacher.rest_em.sft_update`), in one of two forms, named by the
``save`` field of its ``manifest.json``:
- 'merged': a full checkpoint with the adapter merged in. It loads like any model folder, and
  can be deleted once newer versions exist (each is self-contained).
- 'adapter': only the LoRA adapter, plus ``parent`` (the version it was trained from). Loading
  rebuilds the parent (recursively) and merges the adapter into it, so an adapter version is never
  deleted: every later version in its chain needs it.

A folder counts as a version only once its manifest is written. `sft_update` writes a version into
a ``.tmp-*`` sibling and renames it into place, so a ``.tmp-*`` folder is always crash debris.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from core.catalog import teacher_path
from core.models import load_model

MANIFEST = "manifest.json"
_VERSION = re.compile(r"v([1-9][0-9]*)")


def read_manifest(folder: Path) -> dict | None:
    """The version manifest of ``folder``, or None if it is not a (complete) version folder."""
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def adapter_version(model: str) -> tuple[Path, dict] | None:
    """(folder, manifest) of an adapter-only version named by ``model`` (a shipped teacher's name
    among them); None for any other model."""
    folder = Path(teacher_path(model)).expanduser()
    manifest = read_manifest(folder) if folder.is_dir() else None
    return (folder, manifest) if manifest is not None and manifest.get("save") == "adapter" else None


def load_teacher(model: str, *, cache: str | None = None, trust_remote_code: bool = False, dtype=None,
                 attn_implementation: str | None = None, device=None):
    """Return (model, tokenizer) of a teacher version, in eval mode (as `load_model`).

    An adapter version is rebuilt from its chain: its parent is loaded (recursively), the adapter is
    applied and merged. The tokenizer is the root's (SFT never changes it). A shipped teacher's name
    (`catalog.TEACHERS`) loads its adapter folder.
    """
    adapter = adapter_version(model)
    if adapter is None:
        return load_model(model, cache=cache, trust_remote_code=trust_remote_code, dtype=dtype,
                          attn_implementation=attn_implementation, device=device)
    from peft import PeftModel

    folder, manifest = adapter
    parent = parent_of(folder, manifest)
    base, tok = load_teacher(parent, cache=cache, trust_remote_code=trust_remote_code, dtype=dtype,
                             attn_implementation=attn_implementation, device=device)
    lm = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    lm.eval()
    return lm, tok


def root_model(model: str) -> str:
    """The model an adapter version's chain starts from (whose tokenizer it uses), or ``model``
    itself (a shipped teacher's name: its folder)."""
    adapter = adapter_version(model)
    return teacher_path(model) if adapter is None else root_model(parent_of(*adapter))


def parent_of(folder: Path, manifest: dict) -> str:
    """What the adapter version ``folder`` is built on: a sibling version, recorded as '../v{n}'
    relative to ``folder`` (see rest_em._parent_ref), as a path; an absolute folder, a built-in
    name or a hub id as recorded (that is the configured model, not part of this run).

    A relative reference must stay in the checkpoints folder, on an earlier version: a manifest is
    a file anyone can edit or copy, and '../../elsewhere' would load (and merge) whatever lies
    there, or recurse forever on a reference to itself."""
    ref = str(manifest["parent"])
    if not ref.startswith("../"):
        return ref
    here = Path(folder).resolve()
    parent = (here / ref).resolve()
    n, own = (_VERSION.fullmatch(p.name) for p in (parent, here))
    if parent.parent != here.parent or parent == here or (n and own and int(n[1]) >= int(own[1])):
        raise ValueError(f"{here / MANIFEST}: parent {ref!r} resolves to {parent}, which is not an earlier "
                         f"version in {here.parent}; a version's parent must be '../v{{n}}', n below its own")
    return str(parent)


def list_versions(checkpoints: Path) -> list[int]:
    """Numbers n of the complete versions ``checkpoints/v{n}`` (n >= 1), sorted."""
    checkpoints = Path(checkpoints)
    if not checkpoints.is_dir():
        return []
    found = [(m, p) for p in checkpoints.iterdir() if (m := _VERSION.fullmatch(p.name)) and p.is_dir()]
    return sorted(int(m.group(1)) for m, p in found if (p / MANIFEST).is_file())


def _parent_version(checkpoints: Path, n: int) -> int | None:
    """The sibling version that version n was trained from, if its parent is one."""
    ref = (read_manifest(checkpoints / f"v{n}") or {}).get("parent", "")
    m = _VERSION.fullmatch(ref[3:]) if ref.startswith("../") else None
    return int(m.group(1)) if m else None


def prune(checkpoints: Path, keep_last: int, best: int | None) -> list[int]:
    """Delete old merged versions; return the numbers deleted.

    Kept: the last ``keep_last`` versions, version ``best`` (None: no best yet), every adapter
    version, and every version one of those is built on (an adapter's parent chain). Leftover
    ``.tmp-*`` folders (crash debris) are removed too.
    """
    if keep_last < 1:
        raise ValueError(f"teacher.sft.keep_last must be >= 1 (the newest version is the teacher), got {keep_last}")
    checkpoints = Path(checkpoints)
    for debris in checkpoints.glob(".tmp-*"):
        shutil.rmtree(debris, ignore_errors=True)
    versions = list_versions(checkpoints)
    adapters = {n for n in versions if read_manifest(checkpoints / f"v{n}").get("save") == "adapter"}
    # Each adapter needs its parent, merged or not; an adapter parent keeps its own parent in turn.
    needed = {_parent_version(checkpoints, n) for n in adapters}
    keep = set(versions[-keep_last:]) | adapters | needed | {best}
    deleted = [n for n in versions if n not in keep]
    for n in deleted:
        shutil.rmtree(checkpoints / f"v{n}")
    return deleted
