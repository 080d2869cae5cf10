"""Ray launcher (launcher: ray). Placeholder: the settings only; the launcher is being written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class RayConfig:
    """Ray cluster and actor resources (used when launcher: ray)."""

    address: Optional[str] = None
    """Cluster to join ('auto', 'ray://host:10001', ...); None starts a local cluster in the driver."""
    num_cpus: Optional[int] = None
    """CPUs of a local cluster started by the driver (None: all of this machine's)."""
    worker_cpus: float = 1.0
    """CPUs requested by each student worker actor."""
    worker_gpus: float = 0.0
    """GPUs requested by each student worker actor (fractions share a GPU)."""
    teacher_cpus: float = 1.0
    """CPUs requested by the teacher generation actor."""
    teacher_gpus: float = 0.0
    """GPUs requested by the teacher generation actor."""
    max_restarts: int = 3
    """Restarts of a worker actor after it dies (Ray restarts it; its leased job is delivered again)."""
    shared_path: Optional[str] = None
    """A folder every node sees (NFS, ...): teacher versions are copied there for remote actors.
    None: they travel through Ray's object store."""
    dashboard: bool = False
    """Start Ray's dashboard with a local cluster (bound to dashboard_host)."""
    dashboard_host: str = "127.0.0.1"
    """Interface the dashboard of a local cluster binds to (loopback unless you open it up)."""
