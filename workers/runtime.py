"""The Ray runtime: a local Ray by default, an existing cluster when an address is given."""
from __future__ import annotations

import logging
import os
import signal
import threading

import ray

from storage.errors import DomainError

log = logging.getLogger("thresher.ray")
NAMESPACE = "thresher"


def init_ray(address: str | None = None) -> None:
    """Join `address` (or RAY_ADDRESS), else start a local Ray on this machine. Idempotent."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Workers import this project's packages; locally they inherit our interpreter and sys.path,
    # on a cluster the image must have Thresher installed (deploy/Dockerfile).
    kwargs = dict(namespace=NAMESPACE, log_to_driver=False, ignore_reinit_error=True)
    # ray.init installs its own SIGTERM handler, which would skip the server's orderly shutdown.
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, **kwargs)
    else:
        log.info("starting a local Ray")
        # address="local": a new Ray of our own, even when `ray start` left a cluster on this machine.
        ray.init(address="local", include_dashboard=False, **kwargs)
    if main and sigterm is not None:
        signal.signal(signal.SIGTERM, sigterm)


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def node_id() -> str:
    """The Ray node this code runs on (tasks return it, so a job can say where its shards ran)."""
    return ray.get_runtime_context().get_node_id()


def ray_reachable() -> bool:
    try:
        return ray.is_initialized() and bool(ray.cluster_resources())
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False


def ray_get(ref, what: str, timeout: float | None = None):
    """The result of a Ray task or actor call. A domain error raised inside it (JobFailed, a bad
    checkpoint) comes back as itself; any other failure as RuntimeError naming `what`."""
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if getattr(e, "cause", None) else e
        if isinstance(cause, DomainError):
            raise cause from None
        raise RuntimeError(f"{what} failed: {cause}") from None
