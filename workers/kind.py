"""What a job kind declares: its spec, its `run(ctx, spec)`, its stages in the order it runs them
with the resources of each, and whether it is light.

As in NeMo Curator, a stage says what one of its tasks needs (CPUs, GPUs) and the engine turns that
into Ray options; nothing else in a job kind asks Ray for resources. `run` executes in the service
process (the Ray driver) and does its heavy work through the stages' Ray tasks and actors.

The stages' order is the job's plan (what the dashboard and `jobs watch` show as still to come);
`skip` names the stages a given spec does not run, `up_to` those whose total is a ceiling (a
training that stops early). A light kind (or a spec a kind's `light` predicate calls light) runs in
the engine's light lane: its own threads, and tasks that reserve no CPU, so that trainings holding
every core never hold it up.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from pydantic import BaseModel

from workers.runtime import cluster_gpus, largest_node_cpus
from workers.specs import iter_refs


@dataclass(frozen=True)
class Resources:
    """One task of a stage. `cpus` cores each, or, with `cpu_share`, that share of the CPUs of the
    cluster's largest node (at most `max_threads`: a training task's torch threads). With `gpus` and
    a cluster that has GPUs, the task takes that many GPUs and one CPU instead."""
    cpus: int = 1
    gpus: float = 0
    cpu_share: float | None = None
    max_threads: int = 16

    def on_gpu(self) -> bool:
        return bool(self.gpus) and cluster_gpus() > 0

    def threads(self) -> int:
        """Torch threads of one task."""
        if self.on_gpu():
            return 1
        if self.cpu_share is None:
            return self.cpus
        return max(1, min(self.max_threads, int(largest_node_cpus() * self.cpu_share)))

    def ray_options(self, light: bool = False) -> dict:
        """`light`: a task of the light lane reserves no CPU (the lane bounds how many run at once),
        so it starts at once beside trainings that reserved every core."""
        if self.on_gpu():
            return {"num_gpus": self.gpus, "num_cpus": 0 if light else 1}
        return {"num_cpus": 0 if light else self.threads()}


SHARD_TASK = Resources(cpus=1)                       # one shard, one core
TRAINING = Resources(gpus=1, cpu_share=1.0)          # one model: a GPU, or the cores of a node
HALF_TRAINING = Resources(gpus=1, cpu_share=0.5)     # two models trained side by side
CPU_TRAINING = Resources(cpu_share=1.0)              # a CPU-only learner (fastText): a node's cores, never a GPU
SCORER = Resources(gpus=1, cpus=1)  # a LossScorer actor: one per GPU, or one single-threaded per core
BOOKKEEPING = Resources(cpus=0)                      # progress boards and other tiny actors
SQL_PASS = Resources(cpu_share=0.5, max_threads=8)   # one DuckDB pass over a whole job's parts (its threads)
# Work an HTTP request waits on (parsing an upload, checking a checkpoint) runs at once, beside the
# jobs' reservations: a training holding a node's cores must not hold up a user's upload.
REQUEST_TASK = Resources(cpus=0)


def small_inputs(spec: BaseModel, docs_of: Callable[[str, str], int], max_docs: int) -> bool:
    """A `light` predicate: the corpora and manifests the spec names hold at most `max_docs`
    documents in all (THRESHER_LIGHT_MAX_DOCS), e.g. a DSIR over a few thousand documents.
    `docs_of(table, id)` counts one (a corpus's documents, a manifest's rows)."""
    return sum(docs_of(table, id_) for table, id_, _ in iter_refs(spec)) <= max_docs


@dataclass(frozen=True)
class JobKind:
    name: str
    spec: type[BaseModel]
    run: Callable
    description: str = ""
    stages: Mapping[str, Resources] = field(default_factory=dict)
    """Every stage, in the order the job runs them (its plan), with what one of its tasks needs."""
    internal: bool = False  # started by the service itself (ingest, export), not via POST /v1/jobs
    on_end: Callable | None = None  # on_end(ctx, state) when the job does not succeed
    skip: Mapping[str, Callable[[BaseModel], bool]] = field(default_factory=dict)
    """stage -> skip(spec): the stages a spec does not run (a given model instead of a trained one)."""
    up_to: frozenset[str] = frozenset()
    """Stages whose total is a ceiling: trainings that stop early (their ETA is from the expected stop)."""
    light: bool | Callable[[BaseModel, Callable[[str, str], int], int], bool] = False
    """True: every job of this kind is light; or a predicate light(spec, docs_of, max_docs) such as
    `small_inputs`. Light jobs run in the engine's light lane."""

    def plan(self, spec: BaseModel) -> list[str]:
        """The stages a job with this spec runs, in order."""
        return [s for s in self.stages if not (s in self.skip and self.skip[s](spec))]

    def is_light(self, spec: BaseModel, docs_of: Callable[[str, str], int], max_docs: int) -> bool:
        return self.light(spec, docs_of, max_docs) if callable(self.light) else bool(self.light)
