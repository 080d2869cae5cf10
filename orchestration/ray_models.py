"""Model files for Ray actors: how a model folder that only the driver has reaches an actor.

Built-in names and hub ids are resolved by each node from its own cache. A local folder (a teacher
version under run/checkpoints, a local student) travels through Ray's object store (put once as
{path: bytes}; each actor unpacks it into a temp folder of its own, removed when the actor exits)
or, with ``ray.shared_path``, is copied once into that folder, which every node mounts. An adapter
version takes its chain of parent folders along.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path


def model_files(model: str) -> dict[str, Path | bytes]:
    """{'m{i}/relative path': file} of the local folders ``model`` needs ({} for a built-in or hub id):
    the folder itself (m0) and, for an adapter version, its local parents (m1, m2, ...), each
    adapter manifest rewritten to name its parent in the copy."""
    from core.catalog import BUILTINS
    from teacher.versions import MANIFEST, parent_of, read_manifest

    files: dict[str, Path | bytes] = {}
    folder, i = Path(model).expanduser(), 0
    while model not in BUILTINS and folder.is_dir():
        files.update({f"m{i}/{f.relative_to(folder).as_posix()}": f for f in sorted(folder.rglob("*")) if f.is_file()})
        manifest = read_manifest(folder)
        if manifest is None or manifest.get("save") != "adapter":
            break
        # an earlier sibling version (checked: never outside the checkpoints folder), an absolute
        # folder, or a built-in / hub id
        ref = parent_of(folder, manifest)
        parent = Path(ref).expanduser()
        if parent.is_dir():
            files[f"m{i}/{MANIFEST}"] = json.dumps({**manifest, "parent": f"../m{i + 1}"}).encode()
        folder, model, i = parent, ref, i + 1
    return files


def _digest(files: dict[str, Path | bytes]) -> str:
    """Names a copy by what it holds: paths, and each file's driver path, size and mtime."""
    h = hashlib.sha256()
    for rel, f in sorted(files.items()):
        h.update(rel.encode())
        h.update(f if isinstance(f, bytes) else f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def write_tree(dest: Path, files: dict[str, Path | bytes]) -> str:
    """Write ``files`` as folder ``dest`` unless it exists; returns the model folder in it (m0).
    Written into a temp sibling and renamed, so a half-written copy is never loaded."""
    if not dest.is_dir():
        tmp = dest.with_name(f".{dest.name}.tmp-{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for rel, f in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(f, bytes):
                (tmp / rel).write_bytes(f)
            else:
                shutil.copyfile(f, tmp / rel)
        try:
            tmp.rename(dest)
        except OSError:  # another driver was first to the shared folder
            shutil.rmtree(tmp, ignore_errors=True)
    return str(dest / "m0")


def ship(model: str, rc) -> dict:
    """How an actor gets ``model`` (``rc``: the RayConfig): {"model": name} (each node resolves it), {"path": the copy under
    rc.shared_path, named by its content, so kept for restarts and reused}, or {"files": object ref
    of {path: bytes}}."""
    files = model_files(model)
    if not files:
        return {"model": model}
    if rc.shared_path:
        return {"path": write_tree(Path(rc.shared_path).expanduser() / _digest(files), files)}
    import ray

    return {"files": ray.put({rel: f if isinstance(f, bytes) else f.read_bytes() for rel, f in files.items()})}


def local_model(spec: dict) -> str:
    """In an actor: the model name or folder to load for a `ship` spec. A folder from the object
    store is unpacked into a temp folder of this actor, removed when it exits (see `terminate`)."""
    if "files" not in spec:
        return spec.get("path") or spec["model"]
    import atexit

    import ray

    for old in Path(tempfile.gettempdir()).glob("seal-model-*-*"):  # left by killed actors (no atexit ran)
        pid = old.name.split("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    dest = Path(tempfile.mkdtemp(prefix=f"seal-model-{os.getpid()}-"))
    atexit.register(shutil.rmtree, dest, ignore_errors=True)
    return write_tree(dest / "copy", ray.get(spec["files"]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as someone else's
        pass
    return True


def terminate(actor) -> None:
    """Let ``actor`` exit like a process, after the calls queued before (its atexit hooks run, so
    its unpacked model goes; Ray does not restart it). ray.kill would leave the copy behind."""
    actor.__ray_terminate__.remote()
