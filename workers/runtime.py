"""The Ray runtime: a local Ray by default, an existing cluster when an address is given."""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import signal
import threading
import time

import psutil
import ray

from storage.errors import DomainError
from storage.fs import storage_error

log = logging.getLogger("thresher.ray")
NAMESPACE = "thresher"
SESSION_FILE = "ray-session.json"  # under the service's home: the local Ray it started
_RAY_PROGRAM = re.compile(r"/ray/\S*(\.py|/raylet|/gcs_server)$")  # a script or binary of the ray package
# What init_ray started: a connection, a local Ray, and the file recording that Ray's session.
_owned: dict = {"connection": False, "local": False, "record": None}


def init_ray(address: str | None = None, home: str | None = None) -> None:
    """Join `address` (or RAY_ADDRESS), else start a local Ray on this machine. Idempotent.

    With `home`, first stop what is left of a local Ray that an earlier service with this home
    started and did not stop (it was killed), then record the local Ray this one starts."""
    if home:
        reap_orphaned_session(home)
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
        if home:
            _record_session(home)
    if main and sigterm is not None:
        signal.signal(signal.SIGTERM, sigterm)


def _session_dir() -> str:
    return ray._private.worker._global_node.get_session_dir_path()


def _record_session(home: str) -> None:
    me = psutil.Process()
    record = {"session_dir": _session_dir(), "pid": me.pid, "create_time": me.create_time()}
    path = os.path.join(home, SESSION_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)
    _owned["record"] = path


def _holds_session(p: psutil.Process, session_dir: str) -> bool:
    """Whether `p` belongs to the Ray session in `session_dir`: a Ray program whose command line
    names the session (raylet, GCS, log monitor), or a process renamed `ray::…` (the agents and
    workers) that writes its logs there. A user's `tail` of those logs is neither."""
    prefix = session_dir.rstrip("/") + "/"
    try:
        cmdline = p.cmdline()
        if any(session_dir in arg for arg in cmdline) and any(_RAY_PROGRAM.search(arg) for arg in cmdline):
            return True
        renamed = bool(cmdline) and cmdline[0].startswith("ray::")
        return renamed and any(f.path.startswith(prefix) for f in p.open_files())
    except psutil.Error:  # gone, a zombie, or not ours to read
        return False


def reap_orphaned_session(home: str, grace_s: float = 2.0) -> list[int]:
    """Kill the processes of the local Ray that the last service with this `home` started, when that
    service is gone: killed with SIGKILL, it could not stop them, and its dashboard and runtime-env
    agents (~200 MB) live on, ignoring SIGTERM. Only that session's processes are touched (it is
    named in the record this module wrote), never a Ray someone else started. Returns their pids."""
    path = os.path.join(home, SESSION_FILE)
    try:
        with open(path) as f:
            record = json.load(f)
        session_dir = record["session_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    try:
        owner = psutil.Process(record["pid"])
        if abs(owner.create_time() - record["create_time"]) < 1e-3:
            log.warning("the service (pid %d) that started the Ray of %s still runs; leaving it", owner.pid, home)
            return []
    except (psutil.Error, KeyError, TypeError):
        pass  # the service that started it is gone
    me = os.getpid()
    found = [p for p in psutil.process_iter() if p.pid != me and _holds_session(p, session_dir)]
    _stop(found, grace_s)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    if found:
        log.info("stopped %d processes of the local Ray a killed service left running: %s",
                 len(found), sorted(p.pid for p in found))
    return [p.pid for p in found]


def _stop(procs: list[psutil.Process], grace_s: float) -> list[psutil.Process]:
    """SIGTERM, then SIGKILL for what is still alive after `grace_s`; returns those killed."""
    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return alive


def _session_processes() -> list[psutil.Process]:
    """This process's children that belong to the local Ray session, with all their descendants
    (the agents rename themselves, so they are found as the raylet's children)."""
    session = os.path.basename(_session_dir())
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
    killed = _stop([p for p in procs if p.is_running()], grace_s)
    if killed:
        log.info("killed %d Ray processes that outlived ray.shutdown()", len(killed))
    record, _owned["record"] = _owned["record"], None
    if record and os.path.exists(record):
        os.unlink(record)  # stopped in order: nothing for the next start to clean


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


def process_cpu_s() -> float:
    """CPU seconds of this process (all threads) and of the children it has waited for: the
    classifier fits its models in child processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measured(fn):
    """A task body whose dict result gets `cpu_s`: the CPU seconds its process (and the child
    processes it waited for) spent on it, all threads (torch's, DuckDB's) counted. Ray runs one task
    at a time in a worker process, so the process's CPU time over the call is the task's; reserved
    cores × wall time would count idle cores (a compare job reports what each selector cost)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        started = process_cpu_s()
        out = fn(*args, **kwargs)
        return {**out, "cpu_s": process_cpu_s() - started} if isinstance(out, dict) else out
    return wrapper


def actor_cpu(actor) -> float:
    """An actor's CPU seconds since its previous call of this (the first: since its process started,
    which is the actor's own: loading its model is part of what it cost)."""
    now = process_cpu_s()
    spent, actor._cpu_mark = now - getattr(actor, "_cpu_mark", 0.0), now
    return spent


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
