"""The Ray cluster of launcher: ray: its config (`RayConfig`), joining it or starting a local one,
and the check that the actors fit in it. A local cluster (no ``address``) binds every port to
loopback unless ``node_ip`` opens it up."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Optional

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray keeps a loopback node address


@dataclass
class RayConfig:
    """Ray cluster and actor resources (used when launcher: ray)."""

    address: Optional[str] = None
    """Cluster to join ('auto', 'ray://host:10001', ...); None starts a local cluster in the driver.
    Every node needs this package installed (the same version as the driver)."""
    num_cpus: Optional[int] = None
    """CPUs of a local cluster started by the driver (None: all of this machine's)."""
    node_ip: str = "127.0.0.1"
    """Address a local cluster started by the driver binds to. Loopback (default): no port is
    reachable from the network and no other node can join. Another address: Ray listens on every
    interface, and nodes can join with `ray start --address`."""
    worker_cpus: float = 1.0
    """CPUs requested by each student worker actor."""
    worker_gpus: float = 0.0
    """GPUs requested by each student worker actor (fractions share a GPU; 0: Ray hides every GPU from
    it, so it runs on CPU even on a GPU node)."""
    teacher_cpus: float = 1.0
    """CPUs requested by the teacher generation actor (it exists while the driver generates edits,
    alongside the student actors: leave room for it)."""
    teacher_gpus: float = 0.0
    """GPUs requested by the teacher generation actor (0: it runs on CPU, as student actors with 0)."""
    max_restarts: int = 3
    """Restarts of an actor after it dies (Ray restarts it; a student's job is delivered again, a
    teacher's generate call is retried). One death more stops the run (resumable)."""
    shared_path: Optional[str] = None
    """A folder every node sees (NFS, ...): local model folders are copied there for the actors.
    None: they travel through Ray's object store."""
    dashboard: bool = False
    """Start Ray's dashboard with a local cluster (bound to dashboard_host)."""
    dashboard_host: str = "127.0.0.1"
    """Interface the dashboard of a local cluster binds to (loopback unless you open it up)."""


def init_ray(rc: RayConfig) -> None:
    """Join ``rc.address``, or start a local cluster bound to ``rc.node_ip``; nothing if Ray is up."""
    import ray

    if ray.is_initialized():
        return
    if rc.address:
        ray.init(address=rc.address)
        return
    if ipaddress.ip_address(rc.node_ip).is_loopback:
        # Ray swaps a loopback node address for this machine's routable one (so that other nodes
        # could join) and its servers then listen on every interface. Its single-machine mode, the
        # default on macOS and Windows, keeps loopback: the flag is read when ray is imported, the
        # variable by the processes the cluster starts.
        from ray._private import ray_constants

        os.environ[LOCAL_ONLY_ENV] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(num_cpus=rc.num_cpus, include_dashboard=rc.dashboard, dashboard_host=rc.dashboard_host,
             _node_ip_address=rc.node_ip)


def check_resources(cfg) -> None:
    """Refuse actors a local cluster can never place together: the student actors hold their
    resources between rounds, and the teacher's actor would wait for them forever. (A cluster
    joined by address may grow, so it is not checked.)"""
    import ray

    from core.config import ConfigError

    rc = cfg.ray
    if rc.address:
        return
    n = (1 if cfg.roles == "same" else len(cfg.students)) * cfg.workers.per_student
    have = ray.cluster_resources()
    for res, per, teacher in (("CPU", rc.worker_cpus, rc.teacher_cpus), ("GPU", rc.worker_gpus, rc.teacher_gpus)):
        if n * per + teacher > have.get(res, 0) + 1e-9:
            raise ConfigError(f"launcher=ray: {n} student actor(s) x ray.worker_{res.lower()}s={per} + the teacher's "
                              f"ray.teacher_{res.lower()}s={teacher} need more than the {have.get(res, 0):g} {res}s of "
                              f"the local Ray cluster; lower them (fractions are fine), workers.per_student, or "
                              f"raise ray.num_cpus")
