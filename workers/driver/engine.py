"""The job engine: plans per-shard work, runs it on Ray, reports progress, survives restarts.

Runs inside the service process (the Ray driver), which also owns the catalog. A job is a function
`run(ctx, spec) -> result` of its kind (workers/jobs/, declared as a workers.kind.JobKind); it does
its heavy work through `ctx.map_shards` (a task per shard or item) and `ctx.run_one` (one task),
which run plain functions `fn(store, ...)` on Ray with bounded in-flight work, retries, progress and
cancellation, with the resources its kind declares for the stage (`ctx.run_tasks` under them). Every
task writes its output under a deterministic name in storage; a task whose
output already exists is not run again. That is the whole resume story: after a restart, queued and
running jobs are started again and recompute only the shards that were not finished. A job that
the service stopped while running `max_attempts` times (a job that kills its process would
otherwise be resumed, and kill it, forever) is failed instead.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import os
import statistics
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pyarrow as pa
import ray

from storage import layout
from storage.catalog import Catalog, NotFound, now
from storage.errors import DomainError, redact
from storage.fs import Store, storage_error
from storage.inputs import Access
from workers.driver import lifecycle
from workers.kind import BOOKKEEPING, JobKind, Resources
from workers.runtime import cluster_cpus, measured, ray_get
from workers.specs import SpecLimits, check_limits, iter_refs

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
    light_concurrent_jobs: int = 2
    """Light jobs run at once (their own lane, beside the max_concurrent_jobs heavy ones)."""
    light_max_docs: int = 10_000
    """A kind whose `light` is a size predicate (selections) is light up to this many input documents."""
    light_workers: int = 2
    """Warm worker processes of the light lane (actors reserving no CPU): its tasks run on them, at
    most this many at once, so they start at once beside trainings and take at most this many cores."""


HISTORY_JOBS = 10  # earlier jobs of a kind whose stage times estimate the stages still to come
WAIT_CHECK_S = 2.0  # how often a stage with no task started asks Ray what is free


def derived_id(prefix: str, job_id: str, role: str = "") -> str:
    """Ids of what a job creates are derived from the job id, so a resumed job finds its own output."""
    return f"{prefix}_{hashlib.sha1(f'{job_id}/{role}'.encode()).hexdigest()[:20]}"


def job_plan(stages: list[dict], planned: list[str], rate: float | None, history: dict, input_docs: int,
             up_to: frozenset = frozenset(), running: bool = True) -> list[dict]:
    """The whole job, stage by stage: the stages run so far (progress.stages; the last one is
    running while `running`), then the planned stages still to come, each with its ETA in seconds:
    the running stage's from its measured `rate`, a stage to come from what the same stage took in
    earlier jobs of the kind (`history`, see JobEngine.stage_history); None when unknown. A planned
    stage that comes before one already run was skipped (a resumed job found its output)."""
    out = []
    for i, s in enumerate(stages):
        current = running and i == len(stages) - 1
        entry = {"stage": s["stage"], "state": "running" if current else "done", "done": s.get("done", 0),
                 "total": s.get("total", 0), "unit": s.get("unit"), "eta_s": 0.0}
        if s.get("up_to"):
            entry["up_to"] = s["up_to"]
        if current:
            entry.update(running_eta(entry["done"], entry["total"], rate, history.get(s["stage"]),
                                     s["stage"] in up_to))
        out.append(entry)
    seen = {s["stage"] for s in stages}
    last = max((planned.index(s) for s in seen if s in planned), default=-1)
    for name in planned[last + 1:]:
        if name not in seen:
            out.append({"stage": name, "state": "pending", "done": 0, "total": None, "unit": None,
                        **pending_eta(history.get(name), input_docs)})
    return out


def running_eta(done: float, total: float, rate: float | None, hist: dict | None, is_up_to: bool) -> dict:
    """The running stage's ETA from its measured rate: to its total, or for a stage that may stop
    early (`is_up_to`) to where earlier jobs' runs of it stopped, when they did before this point."""
    if not rate or not total:
        return {"eta_s": None, "basis": "unknown: no rate measured yet"}
    stop = hist and hist.get("stop_fraction")
    if is_up_to and stop and done < stop * total:
        return {"eta_s": round((stop * total - done) / rate, 1), "expected_total": round(stop * total),
                "basis": f"the measured rate, to where {hist['jobs']} earlier run(s) stopped early (median "
                         f"{stop:.0%} of the ceiling)"}
    return {"eta_s": round(max(0.0, total - done) / rate, 1),
            "basis": "the measured rate" + (", to the ceiling (it may stop before)" if is_up_to else "")}


def pending_eta(hist: dict | None, input_docs: int) -> dict:
    """A stage to come: the median seconds per input document the same stage took in earlier jobs of
    the kind, times this job's input documents (the median seconds when sizes are unknown)."""
    if not hist:
        return {"eta_s": None, "basis": "unknown: no earlier job of this kind ran this stage"}
    if hist.get("per_doc") is not None and input_docs:
        return {"eta_s": round(hist["per_doc"] * input_docs, 1),
                "basis": f"{hist['jobs']} earlier job(s): {1000 * hist['per_doc']:.3g} s per 1,000 input documents"}
    return {"eta_s": round(hist["seconds"], 1), "basis": f"{hist['jobs']} earlier job(s): median seconds"}


@dataclass
class JobContext:
    engine: "JobEngine"
    job: dict
    cancel_event: threading.Event
    nodes: dict = field(default_factory=dict)     # stage -> {Ray node id: tasks finished there}
    cpu_s: float = 0.0                            # CPU seconds its tasks measured (workers.runtime.measured)
    light: bool = False                           # runs in the light lane (tasks reserve no CPU)
    lane: Any = None                              # the Lane it runs in
    plan: list = field(default_factory=list)      # the stages this spec runs, in order (JobKind.plan)
    input_docs: int = 0                           # documents the spec names: what stage costs scale by
    history: dict = field(default_factory=dict)   # stage -> what earlier jobs of the kind took (stage_history)
    holding: str | None = None                    # the stage whose tasks are seen running (reserving CPUs)
    waiting: str | None = None                    # why the current stage has no task running yet
    _stage: dict = field(default_factory=dict)
    _stages: list = field(default_factory=list)   # every stage of this run so far: progress.stages
    _last_write: float = 0.0
    _last_wait_check: float = 0.0
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
        handed it stops itself once it is gone (`stop_when_gone`), and posts its tokens to it."""
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
            self._stage = {"stage": stage, "t0": t, "done0": done, "unit": unit}
            self._stages.append({"stage": stage, "started_at": now()})
            self.holding, self.waiting = None, None
            force = True
        elif self._stage["unit"] != unit:  # counted in another unit from now on (proxies -> tokens)
            self._stage.update(unit=unit, done0=0)
            force = True
        self._stage.update(done=done, total=total, detail=detail)
        rec = self._stages[-1]
        rec.update(done=done, total=total, unit=unit, seconds=round(t - self._stage["t0"], 2))
        if stage in self.kind.up_to:  # the total is a ceiling: keep the largest one posted
            rec["up_to"] = max(rec.get("up_to") or 0, total)
        if force or t - self._last_write >= 0.25 or done >= total:
            self._write()

    def _write(self) -> None:
        self._last_write = time.monotonic()
        s = self._stage
        elapsed = self._last_write - s["t0"]
        rate = (s["done"] - s["done0"]) / elapsed if elapsed > 0 else None
        plan = job_plan(self._stages, self.plan, rate, self.history, self.input_docs, self.kind.up_to,
                        running=True)
        whole = [p["eta_s"] for p in plan if p["state"] != "done"]
        self.catalog.update("jobs", self.job_id, progress={
            "stage": s["stage"], "done": s["done"], "total": s["total"], "unit": s["unit"],
            "rate_per_s": round(rate, 3) if rate else None,
            "eta_s": round(sum(whole), 1) if None not in whole else None,
            **({"detail": s["detail"]} if s["detail"] else {}), **({"waiting": self.waiting} if self.waiting else {}),
            "stages": self._stages, "plan": plan, "input_docs": self.input_docs})

    def begin(self, spec) -> None:
        """The job starts running: its plan, what it reads, and its first progress (all to come)."""
        self.plan = self.kind.plan(spec)
        self.input_docs = self.engine.input_docs(spec)
        self.history = self.engine.stage_history(self.job["kind"], self.tenant, self.kind.up_to)
        plan = job_plan([], self.plan, None, self.history, self.input_docs, self.kind.up_to, running=True)
        whole = [p["eta_s"] for p in plan]
        self.catalog.update("jobs", self.job_id, progress={
            "eta_s": round(sum(whole), 1) if whole and None not in whole else None, "stages": [], "plan": plan,
            "input_docs": self.input_docs})

    def final_progress(self, succeeded: bool) -> dict:
        """The progress a finished job keeps: a success's last stage closed and nothing to come; a
        failure's as it stood, with no ETA."""
        prog = {k: v for k, v in (self.catalog.get("jobs", self.job_id)["progress"] or {}).items() if k != "waiting"}
        if not succeeded:
            return {**prog, "eta_s": None}
        if self._stages:
            self._stages[-1]["seconds"] = round(time.monotonic() - self._stage["t0"], 2)
        return {**prog, "eta_s": 0.0, "stages": self._stages,
                "plan": job_plan(self._stages, [], None, {}, 0, running=False)}

    def _check_waiting(self, stage: str, started: bool) -> None:
        """Say why a stage has no task running yet (the CPUs its tasks need are held by other jobs),
        and mark this job as holding CPUs once its tasks are seen running."""
        res = self.kind.stages.get(stage)
        needs = res is not None and not self.light and (res.ray_options().get("num_cpus") or res.on_gpu())
        if started:
            self.holding, msg = (stage if needs else None), None
        elif not needs or time.monotonic() - self._last_wait_check < WAIT_CHECK_S:
            return
        else:
            self._last_wait_check = time.monotonic()
            msg = self.engine.cpu_wait(self, stage, res)
        if msg != self.waiting:
            self.waiting = msg
            if self._stage:
                self._write()

    def corpus(self, corpus_id: str) -> dict:
        rec = self.catalog.get("corpora", corpus_id, self.tenant)
        if rec["state"] != "ready":
            raise JobFailed("corpus_not_ready", f"corpus {corpus_id} is {rec['state']}, not ready")
        return rec

    def corpus_shards(self, corpus_id: str) -> list[tuple[int, tuple[str, ...]]]:
        return layout.corpus_shards(self.store, corpus_id)

    def corpus_shard_sizes(self, corpus_id: str) -> dict[int, int]:
        """Documents per shard, from the Parquet footers (no data read). A damaged shard fails the job
        naming its file (redacted to `<server>/…` when the error is recorded)."""
        sizes = {}
        for s, p in self.corpus_shards(corpus_id):
            try:
                sizes[s] = self.store.parquet_file(*p).metadata.num_rows
            except pa.ArrowInvalid as e:
                raise JobFailed("corrupt_shard", f"shard {s} of corpus {corpus_id} ({self.store.path(*p)}) "
                                                 f"cannot be read: {e}") from None
        return sizes

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
        limit = self.config.light_workers if self.light else (self.config.max_inflight or 2 * cluster_cpus())
        inflight: dict = {}
        lifeline, n_tasks = self._lifeline, len(pending)
        tokens: TokenCount | None = None
        started = False
        try:
            while pending or inflight:
                self.check_cancelled()
                while pending and len(inflight) < limit:
                    t = pending.pop(0)
                    inflight[t.submit()] = t
                if tokens is None and self._lifeline is not None:  # tasks handed the lifeline post tokens
                    tokens = TokenCount(self._lifeline, n_tasks, fresh=self._lifeline is not lifeline)
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
                for ref in ready:
                    t = inflight.pop(ref)
                    results[t.key] = result = self._measured(ray_get(ref, f"{stage}: task {t.key}"))
                    if isinstance(result, dict) and "node" in result:
                        per_node = self.nodes.setdefault(stage, {})
                        per_node[result["node"]] = per_node.get(result["node"], 0) + 1
                    done += t.size
                    finished.add(t.key)
                    started = True
                    if not (tokens and tokens.active):
                        self.progress(stage, done, total, unit, force=not pending and not inflight,
                                      detail=detail(finished) if detail else None)
                if tokens is not None and tokens.poll():
                    # Long tasks (proxies, pilots) are counted in the tokens they post: a rate shows
                    # within seconds, not when the first one ends.
                    started = True
                    tok_done, tok_total = tokens.counts(finished=not pending and not inflight)
                    self.progress(stage, tok_done, tok_total, "tokens", force=not pending and not inflight,
                                  detail={f"{unit}_done": done, f"{unit}_total": total})
                self._check_waiting(stage, started)
        finally:
            for ref in inflight:
                ray.cancel(ref)
        return results

    def _measured(self, result):
        """A task's result without its `cpu_s`, which is added to the job's."""
        if isinstance(result, dict) and "cpu_s" in result:
            self.cpu_s += result.pop("cpu_s") or 0.0
        return result

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
                self._check_waiting(stage, started=bool(total))  # the task posts once it runs
                if ready:
                    result = self._measured(ray_get(ref, stage))
                    done, total = ray.get(board.get.remote())
                    # A stage that may stop early ends at what it used (its ceiling stays in `up_to`).
                    end = done if stage in self.kind.up_to and done else (total or 1)
                    self.progress(stage, end, end, unit, force=True)
                    return result
        except Cancelled:
            ray.cancel(ref, force=True)
            raise
        finally:
            ray.kill(board)

    def commit_manifest(self, man_id: str, kind: str, info: dict, meta: dict | None = None) -> dict:
        return lifecycle.commit_manifest(self.catalog, self.job, man_id, kind, info, meta)

    def submit(self, stage: str, fn: Callable, *args) -> "ray.ObjectRef":
        """Start one task of `stage`: `fn(store, *args)`, a plain function handed the job's store
        (opened on the worker from its root: a string is all that travels), on Ray with the stage's
        resources, or in the light lane on one of its warm workers (a fresh Ray worker takes seconds
        to start and import the job modules, more than a light job's whole work on a loaded node)."""
        if self.light:
            return self.engine.light_pool.run(store_task, (fn, self.store.root, *args))
        return on_ray(fn, self.store.root, *args, **self.options(stage))

    def map_shards(self, stage: str, fn: Callable, shards: Iterable[tuple[Any, Any]], *args,
                   out: Callable[[Any], tuple] | None = None, each: Callable[[Any], tuple] | None = None,
                   unit: str = "shards", size: Callable[[Any], int] | None = None,
                   detail: Callable[[set], dict] | None = None) -> dict:
        """One task of `stage` per (key, item) of `shards`, e.g. a corpus's (shard, path) pairs:
        `fn(store, key, item, out(key), *args, *each(key))` (see `submit`). A task whose output
        `out(key)` exists is not run again (resume); `each(key)`, the task's own further arguments,
        is called only when the task starts. Returns {key: result} (None for a task skipped)."""
        def task(key, item) -> Task:
            path = out(key) if out else None
            return Task(out=path, key=key, size=size(key) if size else 1, submit=lambda: self.submit(
                stage, fn, key, item, path, *args, *(each(key) if each else ())))
        return self.run_tasks(stage, [task(key, item) for key, item in shards], unit, detail)

    def run_one(self, stage: str, fn: Callable, *args, out: tuple | None = None, unit: str = "steps"):
        """One task of `stage`: `fn(store, *args)` (see `submit`); its result, or None when its
        output `out` exists already (a resumed job)."""
        task = Task(out=out, key=stage, submit=lambda: self.submit(stage, fn, *args))
        return self.run_tasks(stage, [task], unit)[stage]

    def threads(self, stage: str) -> int:
        """Torch threads for one task of `stage`."""
        return self.kind.stages[stage].threads()

    def options(self, stage: str) -> dict:
        """Ray options for a task of `stage`: the resources its kind declares (none reserved in the
        light lane), and retries (a worker's death, storage errors)."""
        return {"max_retries": self.config.task_retries, "retry_exceptions": [OSError, ray.exceptions.RayError],
                **self.kind.stages[stage].ray_options(self.light)}

    def actor_options(self, stage: str) -> dict:
        """Ray options for an actor serving `stage`: restarted (and its calls retried) if its worker dies."""
        return {"max_restarts": self.config.task_retries, "max_task_retries": self.config.task_retries,
                **self.kind.stages[stage].ray_options(self.light)}


@ray.remote
def store_task(fn: Callable, store_root: str, *args):
    """A task on a Ray worker: `fn(store, *args)`, the store opened from its root (see on_ray), its
    CPU seconds added to a dict result (workers.runtime.measured)."""
    return measured(fn)(Store(store_root), *args)


def on_ray(fn: Callable, store_root: str, *args, **options) -> "ray.ObjectRef":
    """Start `fn(store, *args)` as a Ray task with `options`, named after `fn` (what Ray shows and
    the worker's process title, `ray::<fn>`). Jobs start theirs through JobContext.submit."""
    return store_task.options(name=fn.__name__, **options).remote(fn, store_root, *args)


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
    """Alive while its job runs; see JobContext.lifeline. Long tasks ping it with their (done, total)
    tokens, keyed by task, for the job's progress."""

    def __init__(self):
        self.tokens: dict[str, tuple[float, float]] = {}

    def ping(self, task: str = "", done: float = 0, total: float = 0) -> bool:
        if task:
            self.tokens[task] = (done, total)
        return True

    def take(self) -> dict[str, tuple[float, float]]:
        """What tasks posted since the last take (a stage's, read by its run_tasks)."""
        out, self.tokens = self.tokens, {}
        return out


@ray.remote
class LightWorker:
    """A warm process of the light lane: runs the body of a job's remote function (see JobContext.submit)."""

    def __init__(self, modules: list[str]):
        for m in modules:  # the light kinds' modules, imported once here, not per light job
            importlib.import_module(m)

    def run(self, fn, *args):
        return fn._function(*args)  # an ObjectRef among args arrives resolved, as for a task


class LightPool:
    """The light lane's warm workers: started with the engine (they take seconds to start, which a
    light job should not wait for), killed when it stops; tasks go to them in turn (a worker that
    died is restarted by Ray, its calls retried)."""

    def __init__(self, size: int, retries: int, modules: list[str]):
        self.size, self.retries, self.modules = size, retries, modules
        self.workers: list = []
        self.turn = 0
        self.lock = threading.Lock()

    def start(self) -> None:
        with self.lock:
            if not self.workers:
                opts = {"max_restarts": self.retries, "max_task_retries": self.retries, **BOOKKEEPING.ray_options()}
                self.workers = [LightWorker.options(**opts).remote(self.modules) for _ in range(self.size)]

    def run(self, fn, args: tuple) -> "ray.ObjectRef":
        self.start()
        with self.lock:
            worker = self.workers[self.turn % self.size]
            self.turn += 1
        return worker.run.remote(fn, *args)

    def stop(self) -> None:
        with self.lock:
            for w in self.workers:
                ray.kill(w)
            self.workers = []


class TokenCount:
    """The tokens a stage's long tasks (proxies, pilots) post to the job's Lifeline: done over all
    tasks, and the total, each task not yet posting counted as the mean of those that did."""

    def __init__(self, lifeline, tasks: int, fresh: bool):
        self.lifeline, self.tasks, self.seen = lifeline, tasks, {}
        if not fresh:
            lifeline.take.remote()  # what an earlier stage's tasks posted is not this stage's

    @property
    def active(self) -> bool:
        return any(total for _, total in self.seen.values())

    def poll(self) -> bool:
        self.seen.update(ray.get(self.lifeline.take.remote()))
        return self.active

    def counts(self, finished: bool = False) -> tuple[float, float]:
        """(done, total) tokens; once every task has `finished`, done is the total."""
        totals = [t for _, t in self.seen.values() if t]
        total = sum(totals) + max(0, self.tasks - len(totals)) * statistics.mean(totals)
        return (total if finished else sum(min(d, t) for d, t in self.seen.values() if t)), total


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
    """on_progress(done, total) for a long task with no board of its own: pings the job's lifeline
    every 2 s with its tokens (the job's progress counts them), and stops the task once the job has ended. None without a lifeline (a task run
    outside a job, by a bench or a test)."""
    if lifeline is None:
        return None
    task = ray.get_runtime_context().get_task_id() or ""
    return Heartbeat(lambda done, total: lifeline.ping.remote(task, done, total), every_s=2.0)


class Lane:
    """A queue of jobs and the threads that run them, `slots` at a time. The heavy lane runs every
    job that is not light (THRESHER_MAX_CONCURRENT_JOBS); the light lane its own jobs beside them
    (THRESHER_LIGHT_CONCURRENT_JOBS), so an export never waits for a training to end."""

    def __init__(self, name: str, slots: int, setting: str, what: str):
        self.name, self.slots, self.setting, self.what = name, slots, setting, what
        self.queued: deque = deque()
        self.cond = threading.Condition()
        self.said: dict[str, str] = {}  # queued job -> the reason it was last given

    def put(self, job_id: str | None) -> None:
        with self.cond:
            self.queued.append(job_id)
            self.cond.notify()

    def take(self) -> str | None:
        with self.cond:
            while not self.queued:
                self.cond.wait()
            return self.queued.popleft()


class JobEngine:
    def __init__(self, catalog: Catalog, store: Store, config: EngineConfig, kinds: dict[str, JobKind]):
        self.catalog, self.store, self.config, self.kinds = catalog, store, config, kinds
        self.lanes = {"heavy": Lane("heavy", config.max_concurrent_jobs, "THRESHER_MAX_CONCURRENT_JOBS", "a job slot"),
                      "light": Lane("light", config.light_concurrent_jobs, "THRESHER_LIGHT_CONCURRENT_JOBS",
                                    "a light-job slot")}
        self.running: dict[str, JobContext] = {}
        self.light_pool = LightPool(config.light_workers, config.task_retries,
                                    sorted({k.run.__module__ for k in kinds.values() if k.light}))
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
        self.light_pool.start()
        for lane in self.lanes.values():
            for i in range(lane.slots):
                th = threading.Thread(target=self._worker, args=(lane,), name=f"thresher-{lane.name}-job-{i}", daemon=True)
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
        for lane in self.lanes.values():
            for _ in range(lane.slots):
                lane.put(None)
        for th in self.threads:
            th.join(timeout=10)
        self.light_pool.stop()

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

    # -- what a job reads, what earlier jobs took, what it waits for ---------------------------------
    def docs_of(self, table: str, id_: str) -> int:
        """Documents in a corpus, rows in a manifest; 0 for anything else or missing (the job fails
        on it when it runs)."""
        column = {"corpora": "num_docs", "manifests": "num_rows"}.get(table)
        try:
            return int(self.catalog.get(table, id_).get(column) or 0) if column else 0
        except NotFound:
            return 0

    def input_docs(self, spec) -> int:
        return sum(self.docs_of(table, id_) for table, id_, _ in iter_refs(spec))

    def is_light(self, job: dict) -> bool:
        kind = self.kinds[job["kind"]]
        try:
            spec = kind.spec.model_validate(job["spec"])
        except ValueError:
            return True  # it fails at once, on no resources
        return kind.is_light(spec, self.docs_of, self.config.light_max_docs)

    def stage_history(self, kind: str, tenant: str, up_to: frozenset = frozenset()) -> dict:
        """stage -> what it took in the tenant's last HISTORY_JOBS succeeded jobs of `kind` on this
        service: `jobs`, the median `seconds`, the median seconds per input document (`per_doc`), and
        for a stage that may stop early the median fraction of its ceiling it used (`stop_fraction`)."""
        rows, _ = self.catalog.page("jobs", tenant, HISTORY_JOBS, None, kind=kind, state="succeeded")
        seen: dict[str, dict[str, list]] = {}
        for job in rows:
            prog = job["progress"] or {}
            for s in prog.get("stages") or []:
                if s.get("seconds") is None:
                    continue
                h = seen.setdefault(s["stage"], {"seconds": [], "per_doc": [], "stop": []})
                h["seconds"].append(s["seconds"])
                if prog.get("input_docs"):
                    h["per_doc"].append(s["seconds"] / prog["input_docs"])
                if s["stage"] in up_to and s.get("up_to"):
                    h["stop"].append(min(1.0, s.get("done", 0) / s["up_to"]))
        median = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
        return {stage: {"jobs": len(h["seconds"]), "seconds": median(h["seconds"]), "per_doc": median(h["per_doc"]),
                        "stop_fraction": median(h["stop"])} for stage, h in seen.items()}

    def cpu_wait(self, ctx: JobContext, stage: str, res: Resources) -> str | None:
        """Why a task of `stage` has not started: the cluster has less free than it needs, and the
        jobs whose tasks are seen running hold it. None when Ray has room (it is starting) or when no
        job of this service is known to hold the CPUs (nothing honest to name)."""
        need, free, whole = res.ray_options(), ray.available_resources(), ray.cluster_resources()
        gpu = bool(need.get("num_gpus"))
        if free.get("CPU", 0) >= need.get("num_cpus", 0) and (not gpu or free.get("GPU", 0) >= need["num_gpus"]):
            return None
        with self.lock:
            holders = [c for c in self.running.values() if c is not ctx and c.holding]
        if not holders:
            return None
        what = "a GPU" if gpu else "CPUs"
        held = ", ".join(f"job {c.job_id} ({c.holding}, {c.job['kind']})" for c in holders)
        return (f"waiting for {what} held by {held}: a {stage} task needs {need.get('num_gpus') if gpu else need.get('num_cpus')}, "
                f"{free.get('GPU' if gpu else 'CPU', 0):g} of {whole.get('GPU' if gpu else 'CPU', 0):g} free")

    def _say_why_queued(self, lane: Lane) -> None:
        """Write into each queued job of `lane` why it waits: the lane's slots are all taken."""
        with self.lock:
            running = [c.job_id for c in self.running.values() if c.lane is lane]
        with lane.cond:
            queued = [j for j in lane.queued if j is not None]
        if len(running) < lane.slots:
            return  # a thread is about to take the first
        ahead = 0
        for job_id in queued:
            try:
                job = self.catalog.get("jobs", job_id)
            except NotFound:
                continue
            if job["state"] != "queued":
                continue  # cancelled while queued
            msg = (f"waiting for {lane.what}: {len(running)} job{'s' * (len(running) != 1)} running "
                   f"({'; '.join(filter(None, (', '.join(running), f'{lane.setting}={lane.slots}')))})"
                   + (f", {ahead} queued before it" if ahead else ""))
            ahead += 1
            if lane.said.get(job_id) != msg:
                lane.said[job_id] = msg
                self.catalog.update("jobs", job_id, progress={**(job["progress"] or {}), "waiting": msg})

    # -- internals -------------------------------------------------------------------------------
    def _enqueue(self, job_id: str) -> None:
        with self.lock:
            self.cancel_events.setdefault(job_id, threading.Event())
        try:
            job = self.catalog.get("jobs", job_id)
        except NotFound:
            return
        lane = self.lanes["light" if self.is_light(job) else "heavy"]
        lane.put(job_id)
        self._say_why_queued(lane)

    def _worker(self, lane: Lane) -> None:
        while True:
            job_id = lane.take()
            if job_id is None:
                return
            lane.said.pop(job_id, None)
            try:
                self._run(job_id, lane)
            except Exception:  # noqa: BLE001 - a bug in one job must not kill the worker thread
                log.exception("job %s crashed the engine", job_id)
            self._say_why_queued(lane)

    def _run(self, job_id: str, lane: Lane) -> None:
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
        self.catalog.update("jobs", job_id, state="running", started_at=job["started_at"] or now(), attempts=attempts,
                            progress={k: v for k, v in (job["progress"] or {}).items() if k != "waiting"})
        ctx = JobContext(self, job, ev, light=lane.name == "light", lane=lane)
        with self.lock:
            self.running[job_id] = ctx
        self._say_why_queued(lane)
        try:
            spec = kind.spec.model_validate(job["spec"])
            check_limits(spec, self.config.limits)  # the settings may have changed since it was submitted
            ctx.begin(spec)
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
            with self.lock:
                self.running.pop(job_id, None)
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
        self.catalog.update("jobs", ctx.job_id, progress=ctx.final_progress(state == "succeeded"), **fields)
