"""The Ray runtime: a local Ray by default, an existing cluster when an address is given."""
from __future__ import annotations

import logging
import os
import signal
import threading

import psutil
import ray

from storage.errors import DomainError
from storage.fs import storage_error

log = logging.getLogger("thresher.ray")
NAMESPACE = "thresher"
_owned: dict[str, bool] = {"connection": False, "local": False}  # what init_ray started


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
        _owned.update(connection=True, local=False)
    else:
        log.info("starting a local Ray")
        ray.init(address="local", include_dashboard=False, **kwargs)  # never a stranger's `ray start`
        _owned.update(connection=True, local=True)
    if main and sigterm is not None:
        signal.signal(signal.SIGTERM, sigterm)


def _session_processes() -> list[psutil.Process]:
    """This process's children that belong to the local Ray session, with all their descendants
    (the agents rename themselves, so they are found as the raylet's children)."""
    session = os.path.basename(ray._private.worker._global_node.get_session_dir_path())
    found = []
    for child in psutil.Process().children():
        try:
            if any(session in arg for arg in child.cmdline()):
                found += [child, *child.children(recursive=True)]
        except psutil.Error:
            continue
    return found


def shutdown_ray(grace_s: float = 5.0) -> None:
    """Disconnect from Ray if init_ray connected; when it started a local Ray, stop every process
    of it: the dashboard and runtime-env agents and idle workers outlive ray.shutdown() and ignore
    SIGTERM, so what is still alive after `grace_s` is killed. A Ray this process joined but did
    not connect to (tests share one) is left alone."""
    if not (ray.is_initialized() and _owned["connection"]):
        return
    procs = []
    if _owned["local"]:
        try:
            procs = _session_processes()
        except Exception:  # noqa: BLE001 - shutting down anyway
            log.exception("could not list the local Ray's processes")
    ray.shutdown()
    _owned.update(connection=False, local=False)
    alive = [p for p in procs if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    if alive:
        log.info("killed %d Ray processes that outlived ray.shutdown()", len(alive))


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def largest_node_cpus() -> int:
    """The CPUs of the cluster's largest live node: the most one task can have, since a task runs
    on one node (on a cluster of several, the cluster's total would be infeasible)."""
    return max([1] + [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")])


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
    checkpoint) comes back as itself, a failure of the storage as its domain error (a full disk,
    an object store that does not answer); any other failure as RuntimeError naming `what`."""
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if getattr(e, "cause", None) else e
        if isinstance(cause, DomainError):
            raise cause from None
        failed = storage_error(cause)
        if failed is not None:
            raise failed from None
        raise RuntimeError(f"{what} failed: {cause}") from None
