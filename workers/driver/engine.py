"""The job engine: plans per-shard work, runs it on Ray, reports progress, survives restarts.

Runs inside the service process (the Ray driver), which also owns the catalog. A job is a function
`run(ctx, spec) -> result` of its kind (workers/jobs/, declared as a workers.kind.JobKind); it does
its heavy work through `ctx.run_tasks`, which submits one Ray task per item with bounded in-flight
work, retries, progress and cancellation, with the resources its kind declares for the stage. Every task writes its output under a deterministic name in storage; a task whose
output already exists is not run again. That is the whole resume story: after a restart, queued and
running jobs are started again and recompute only the shards that were not finished. A job that
the service stopped while running `max_attempts` times (a job that kills its process would
otherwise be resumed, and kill it, forever) is failed instead.
"""
from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import ray

from storage import layout
from storage.catalog import Catalog, NotFound, now
from storage.errors import DomainError, redact
from storage.fs import Store, storage_error
from storage.inputs import Access
from workers.driver import lifecycle
from workers.kind import BOOKKEEPING, JobKind
from workers.runtime import cluster_cpus, ray_get
from workers.specs import SpecLimits, check_limits

log = logging.getLogger("thresher.engine")
TERMINAL = ("succeeded", "failed", "cancelled")
CANCELLED = {"code": "cancelled", "message": "cancelled by request"}


class Cancelled(Exception):
    pass


class JobFailed(DomainError):
    """A job cannot finish because of its input (the message says what to fix)."""


@dataclass
class Task:
    """One unit of work: `submit()` starts it on Ray; `out` is the storage path it completes by
    writing (None: no durable output, always run)."""
    out: tuple[str, ...] | None
    submit: Callable[[], "ray.ObjectRef"]
    size: int = 1
    key: Any = None


@dataclass
class EngineConfig:
    max_inflight: int = 0
    max_concurrent_jobs: int = 2
    task_retries: int = 3
    shard_size: int = 10_000
    temp_root: str | None = None
    """Where the driver's DuckDB connections spill (selections); None: DuckDB's default."""
    max_temp_size: str | None = None
    allowed_roots: tuple[str, ...] = ()
    """THRESHER_ALLOWED_ROOTS: what a tenant's paths may reach, checked by each task that opens one."""
    limits: SpecLimits = field(default_factory=SpecLimits)
    max_attempts: int = 3
    """Times a job may be running when the service stops (killed, crashed) before it is failed
    rather than resumed; an orderly shutdown does not count."""


def derived_id(prefix: str, job_id: str, role: str = "") -> str:
    """Ids of what a job creates are derived from the job id, so a resumed job finds its own output."""
    return f"{prefix}_{hashlib.sha1(f'{job_id}/{role}'.encode()).hexdigest()[:20]}"


@dataclass
class JobContext:
    engine: "JobEngine"
    job: dict
    cancel_event: threading.Event
    nodes: dict = field(default_factory=dict)     # stage -> {Ray node id: tasks finished there}
    _stage: dict = field(default_factory=dict)
    _stages: list = field(default_factory=list)   # every stage of this run so far: progress.stages
    _last_write: float = 0.0
    _lifeline: Any = None

    @property
    def job_id(self) -> str:
        return self.job["id"]

    @property
    def tenant(self) -> str:
        return self.job["tenant"]

    @property
    def store(self) -> Store:
        return self.engine.store

    @property
    def catalog(self) -> Catalog:
        return self.engine.catalog

    @property
    def kind(self) -> JobKind:
        return self.engine.kinds[self.job["kind"]]

    @property
    def config(self) -> EngineConfig:
        return self.engine.config

    @property
    def access(self) -> Access:
        """The rule for a tenant's paths, handed to every task that opens one (checked at its open)."""
        home = [p for p in self.engine.server_paths() if p != self.store.base]
        return Access(tuple(self.config.allowed_roots), (self.store.root, *home))

    def lifeline(self) -> "ray.actor.ActorHandle":
        """An actor alive while this job runs (killed when it ends, however it ends): a long task
        handed it stops itself once it is gone (`stop_when_gone`)."""
        if self._lifeline is None:
            self._lifeline = Lifeline.options(**BOOKKEEPING.ray_options()).remote()
        return self._lifeline

    def release(self) -> None:
        if self._lifeline is not None:
            ray.kill(self._lifeline)
            self._lifeline = None

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled()

    def progress(self, stage: str, done: float, total: float, unit: str, force: bool = False,
                 detail: dict | None = None) -> None:
        t = time.monotonic()
        if self._stage.get("stage") != stage:
            if self._stages:  # the previous stage lasted until this one began
                self._stages[-1]["seconds"] = round(t - self._stage["t0"], 2)
            self._stage = {"stage": stage, "t0": t, "done0": done}
            self._stages.append({"stage": stage, "started_at": now()})
            force = True
        if not force and t - self._last_write < 0.25 and done < total:
            return
        elapsed = t - self._stage["t0"]
        rate = (done - self._stage["done0"]) / elapsed if elapsed > 0 else None
        eta = (total - done) / rate if rate else None
        self._last_write = t
        self._stages[-1].update(done=done, total=total, unit=unit, seconds=round(elapsed, 2))
        self.catalog.update("jobs", self.job_id, progress={
            "stage": stage, "done": done, "total": total, "unit": unit,
            "rate_per_s": round(rate, 3) if rate else None, "eta_s": round(eta, 1) if eta is not None else None,
            **({"detail": detail} if detail else {}), "stages": self._stages})

    def corpus(self, corpus_id: str) -> dict:
        rec = self.catalog.get("corpora", corpus_id, self.tenant)
        if rec["state"] != "ready":
            raise JobFailed("corpus_not_ready", f"corpus {corpus_id} is {rec['state']}, not ready")
        return rec

    def corpus_shards(self, corpus_id: str) -> list[tuple[int, tuple[str, ...]]]:
        return layout.corpus_shards(self.store, corpus_id)

    def corpus_shard_sizes(self, corpus_id: str) -> dict[int, int]:
        """Documents per shard, from the Parquet footers (no data read)."""
        return {s: self.store.parquet_file(*p).metadata.num_rows for s, p in self.corpus_shards(corpus_id)}

    def run_tasks(self, stage: str, tasks: list[Task], unit: str = "shards",
                  detail: Callable[[set], dict] | None = None) -> dict:
        """Run tasks on Ray (skipping those whose output exists); returns {task.key: result}.

        At most `max_inflight` tasks are in flight. Ray retries a task whose worker died; a task that
        still fails fails the job. Cancellation is checked while waiting and stops in-flight tasks.
        A task that returns a dict with `node` says where it ran: the job's result counts tasks per
        node and stage (`result.nodes`). `detail(keys done)` adds to the progress (e.g. files done).
        """
        total = sum(t.size for t in tasks)
        results: dict = {}
        pending, finished = [], set()
        done = 0
        for t in tasks:
            if t.out is not None and self.store.exists(*t.out):
                done += t.size
                results[t.key] = None
                finished.add(t.key)
            else:
                pending.append(t)
        self.progress(stage, done, total, unit, force=True, detail=detail(finished) if detail else None)
        limit = self.config.max_inflight or 2 * cluster_cpus()
        inflight: dict = {}
        try:
            while pending or inflight:
                self.check_cancelled()
                while pending and len(inflight) < limit:
                    t = pending.pop(0)
                    inflight[t.submit()] = t
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
                for ref in ready:
                    t = inflight.pop(ref)
                    results[t.key] = result = ray_get(ref, f"{stage}: task {t.key}")
                    if isinstance(result, dict) and "node" in result:
                        per_node = self.nodes.setdefault(stage, {})
                        per_node[result["node"]] = per_node.get(result["node"], 0) + 1
                    done += t.size
                    finished.add(t.key)
                    self.progress(stage, done, total, unit, force=not pending and not inflight,
                                  detail=detail(finished) if detail else None)
        finally:
            for ref in inflight:
                ray.cancel(ref)
        return results

    def run_long(self, stage: str, unit: str, submit: Callable[["ray.actor.ActorHandle"], "ray.ObjectRef"],
                 total: float = 1):
        """Run one long Ray task that reports its own progress (e.g. training, in tokens).

        `submit(board)` starts the task and hands it a ProgressBoard actor to call
        `board.set.remote(done, total)` on; this polls the board into the job's progress. `total`
        is the driver's estimate until the task posts its own.
        """
        board = ProgressBoard.options(**BOOKKEEPING.ray_options()).remote()
        ref = submit(board)
        self.progress(stage, 0, total, unit, force=True)
        try:
            while True:
                self.check_cancelled()
                ready, _ = ray.wait([ref], timeout=0.5)
                done, total = ray.get(board.get.remote())
                if total:
                    self.progress(stage, done, total, unit)
                if ready:
                    result = ray_get(ref, stage)
                    done, total = ray.get(board.get.remote())
                    self.progress(stage, total or 1, total or 1, unit, force=True)
                    return result
        except Cancelled:
            ray.cancel(ref, force=True)
            raise
        finally:
            ray.kill(board)

    def commit_manifest(self, man_id: str, kind: str, info: dict, meta: dict | None = None) -> dict:
        return lifecycle.commit_manifest(self.catalog, self.job, man_id, kind, info, meta)

    def threads(self, stage: str) -> int:
        """Torch threads for one task of `stage`."""
        return self.kind.stages[stage].threads()

    def options(self, stage: str) -> dict:
        """Ray options for a task of `stage`: the resources its kind declares, and retries (a
        worker's death, storage errors)."""
        return {"max_retries": self.config.task_retries, "retry_exceptions": [OSError, ray.exceptions.RayError],
                **self.kind.stages[stage].ray_options()}

    def actor_options(self, stage: str) -> dict:
        """Ray options for an actor serving `stage`: restarted (and its calls retried) if its worker dies."""
        return {"max_restarts": self.config.task_retries, "max_task_retries": self.config.task_retries,
                **self.kind.stages[stage].ray_options()}


@ray.remote
class ProgressBoard:
    """Where a long task posts (done, total) for the driver to read."""

    def __init__(self):
        self.done, self.total = 0, 0

    def set(self, done: float, total: float) -> None:
        self.done, self.total = done, total

    def get(self) -> tuple[float, float]:
        return self.done, self.total


@ray.remote
class Lifeline:
    """Alive while its job runs; see JobContext.lifeline."""

    def ping(self) -> bool:
        return True


class Abandoned(RuntimeError):
    """Raised inside a long task whose ProgressBoard or Lifeline is dead: the job that started it
    ended (cancelled, failed, or its service stopped). Ray's own cancel is not enough: a
    force-cancel that reaches a task as it starts can be taken as "not running" while the task runs
    on, holding its CPUs for its whole budget (seen in CI: a cancelled 50M-token training ran 22
    minutes). So a long task also stops itself, at its next progress report."""


class Heartbeat:
    """A long task's link to its job, called as on_progress(done, total): every `every_s` seconds
    (and at the end) it sends `send(done, total)`, a post to the job's ProgressBoard or a ping of its
    Lifeline, and raises Abandoned once an earlier one came back saying the actor is dead. It never
    waits for a reply: a task blocked in ray.get lends its CPUs to other tasks (Ray's rule), and a
    training that waited every second let other work onto the cores it had reserved."""

    def __init__(self, send: Callable[[float, float], "ray.ObjectRef"], every_s: float):
        self.send, self.every_s = send, every_s
        self.last, self.pending = float("-inf"), None

    def __call__(self, done: float, total: float) -> None:
        if done < total and time.monotonic() - self.last < self.every_s:
            return
        self.last = time.monotonic()
        if self.pending is not None and ray.wait([self.pending], timeout=0)[0]:
            ref, self.pending = self.pending, None
            try:
                ray.get(ref)
            except ray.exceptions.ActorDiedError:
                raise Abandoned("the job that started this task has ended (cancelled, failed, or its "
                                "service stopped)") from None
            except ray.exceptions.ActorUnavailableError:
                pass  # briefly unreachable is not gone
        if self.pending is None or done >= total:
            self.pending = self.send(done, total)


def progress_reporter(board) -> Heartbeat:
    """A long task's on_progress(done, total): posts to the job's board every second, and stops the
    task once the board is dead: by time, not by steps, so a cancelled job's training stops within
    seconds whatever its budget."""
    return Heartbeat(lambda done, total: board.set.remote(done, total), every_s=1.0)


def stop_when_gone(lifeline) -> Heartbeat | None:
    """on_progress(done, total) for a long task that reports to no one: pings the job's lifeline
    every 2 s, and stops the task once the job has ended. None without a lifeline (a task run
    outside a job, by a bench or a test)."""
    if lifeline is None:
        return None
    return Heartbeat(lambda done, total: lifeline.ping.remote(), every_s=2.0)


class JobEngine:
    def __init__(self, catalog: Catalog, store: Store, config: EngineConfig, kinds: dict[str, JobKind]):
        self.catalog, self.store, self.config, self.kinds = catalog, store, config, kinds
        self.queue: "queue.Queue[str | None]" = queue.Queue()
        self.cancel_events: dict[str, threading.Event] = {}
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self._stopping = False

    def server_paths(self) -> list[str]:
        """Where this server keeps its files: kept out of the error messages tenants read."""
        home = os.path.dirname(self.config.temp_root) if self.config.temp_root else None
        return [p for p in (self.store.base, home) if p]

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        for i in range(self.config.max_concurrent_jobs):
            th = threading.Thread(target=self._worker, name=f"thresher-job-{i}", daemon=True)
            th.start()
            self.threads.append(th)
        # Resume: jobs that were queued or running when the last process stopped, oldest first.
        unfinished = [j for j in self.catalog.find("jobs") if j["state"] in ("queued", "running")]
        for job in sorted(unfinished, key=lambda j: j["created_at"]):
            stops = job["attempts"] or 0
            if job["state"] == "running" and stops >= self.config.max_attempts:
                log.error("job %s: the service stopped %d times while running it; failing it", job["id"], stops)
                self._finish(JobContext(self, job, threading.Event()), "failed", error={
                    "code": "job_crashed", "message": f"the service stopped {stops} time{'s' * (stops > 1)} while running this job "
                    f"(killed or crashed; at most {self.config.max_attempts}, THRESHER_MAX_JOB_ATTEMPTS): it is "
                    "not resumed again"})
                continue
            log.info("resuming job %s (%s)", job["id"], job["state"])
            self.catalog.update("jobs", job["id"], state="queued")
            self._enqueue(job["id"])

    def stop(self) -> None:
        # Mark the shutdown before waking the jobs: a job that sees Cancelled must know it is a
        # shutdown (stay resumable), not a user's cancel.
        self._stopping = True
        for ev in list(self.cancel_events.values()):
            ev.set()
        for _ in self.threads:
            self.queue.put(None)
        for th in self.threads:
            th.join(timeout=10)

    # -- API used by the service -----------------------------------------------------------------
    def submit(self, job: dict) -> None:
        self.catalog.insert("jobs", job)
        self._enqueue(job["id"])

    def enqueue(self, job_id: str) -> None:
        """Run a job whose `queued` row the caller inserted itself."""
        self._enqueue(job_id)

    def cancel(self, job_id: str) -> dict:
        """Cancel a job: recorded at once, so that the job stays cancelled whatever its thread is
        doing (it may be deep in a stage) and if the service stops before the thread notices; the
        thread stops its Ray work at its next check and only cleans up (the kind's on_end)."""
        job = self.catalog.get("jobs", job_id)
        if job["state"] in TERMINAL:
            return job
        ev = self.cancel_events.get(job_id)
        if ev:
            ev.set()
        self.catalog.update("jobs", job_id, state="cancelled", finished_at=now(), error=CANCELLED)
        return self.catalog.get("jobs", job_id)

    # -- internals -------------------------------------------------------------------------------
    def _enqueue(self, job_id: str) -> None:
        with self.lock:
            self.cancel_events.setdefault(job_id, threading.Event())
        self.queue.put(job_id)

    def _worker(self) -> None:
        while True:
            job_id = self.queue.get()
            if job_id is None:
                return
            try:
                self._run(job_id)
            except Exception:  # noqa: BLE001 - a bug in one job must not kill the worker thread
                log.exception("job %s crashed the engine", job_id)

    def _run(self, job_id: str) -> None:
        try:
            job = self.catalog.get("jobs", job_id)
        except NotFound:
            return
        if job["state"] != "queued":
            return
        ev = self.cancel_events[job_id]
        if ev.is_set():
            self.catalog.update("jobs", job_id, state="cancelled", finished_at=now(), error=CANCELLED)
            return
        kind = self.kinds[job["kind"]]
        # Counted when the job starts running, uncounted when it stops for an orderly shutdown:
        # what is left counts the times its service died under it.
        attempts = (job["attempts"] or 0) + 1
        self.catalog.update("jobs", job_id, state="running", started_at=job["started_at"] or now(), attempts=attempts)
        ctx = JobContext(self, job, ev)
        try:
            spec = kind.spec.model_validate(job["spec"])
            check_limits(spec, self.config.limits)  # the settings may have changed since it was submitted
            result = kind.run(ctx, spec)
        except Cancelled:
            if self._stopping and self.catalog.get("jobs", job_id)["state"] == "running":
                # the service is shutting down: leave the job running, to resume on start
                self.catalog.update("jobs", job_id, attempts=attempts - 1)
                return
            self._finish(ctx, "cancelled", error=CANCELLED)
        except DomainError as e:
            self._finish(ctx, "failed", error={"code": e.code, "message": e.message})
        except Exception as e:  # noqa: BLE001 - report, don't crash
            log.error("job %s failed:\n%s", job_id, traceback.format_exc())
            failed = storage_error(e)  # the storage full or not answering: say so, not its raw error
            self._finish(ctx, "failed", error={"code": failed.code, "message": failed.message} if failed else
                         {"code": "job_error", "message": f"{type(e).__name__}: {e}"})
        else:
            self._finish(ctx, "succeeded", result=result)
        finally:
            ctx.release()
            self.cancel_events.pop(job_id, None)

    def _finish(self, ctx: JobContext, state: str, result=None, error=None) -> None:
        if self.catalog.get("jobs", ctx.job_id)["state"] == "cancelled":
            state, result, error = "cancelled", None, CANCELLED  # a cancel wins over what came after it
        if state != "succeeded" and ctx.kind.on_end:
            ctx.kind.on_end(ctx, state, error)
        if error:
            error = {**error, "message": redact(error["message"], self.server_paths())}
        fields = {"state": state, "finished_at": now(), "error": error}
        if result is not None:
            if ctx.nodes:  # where the work ran: for operators, apart from the user's summary
                result["nodes"] = ctx.nodes
            fields["result"] = result
        prog = ctx.catalog.get("jobs", ctx.job_id)["progress"]
        if prog and state == "succeeded":
            prog.update(eta_s=0.0)
            fields["progress"] = prog
        self.catalog.update("jobs", ctx.job_id, **fields)
