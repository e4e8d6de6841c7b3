"""What a job kind declares: its spec, its `run(ctx, spec)`, and the resources of each of its stages.

As in NeMo Curator, a stage says what one of its tasks needs (CPUs, GPUs) and the engine turns that
into Ray options; nothing else in a job kind asks Ray for resources. `run` executes in the service
process (the Ray driver) and does its heavy work through the stages' Ray tasks and actors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

from pydantic import BaseModel

from workers.runtime import cluster_gpus, largest_node_cpus


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

    def ray_options(self) -> dict:
        if self.on_gpu():
            return {"num_gpus": self.gpus, "num_cpus": 1}
        return {"num_cpus": self.threads()}


SHARD_TASK = Resources(cpus=1)                       # one shard, one core
TRAINING = Resources(gpus=1, cpu_share=1.0)          # one model: a GPU, or the cores of a node
HALF_TRAINING = Resources(gpus=1, cpu_share=0.5)     # two models trained side by side
CPU_TRAINING = Resources(cpu_share=1.0)              # a CPU-only learner (fastText): a node's cores, never a GPU
SCORER = Resources(gpus=1, cpus=1)  # a LossScorer actor: one per GPU, or one single-threaded per core
BOOKKEEPING = Resources(cpus=0)                      # progress boards and other tiny actors
# Work an HTTP request waits on (parsing an upload, checking a checkpoint) runs at once, beside the
# jobs' reservations: a training holding a node's cores must not hold up a user's upload.
REQUEST_TASK = Resources(cpus=0)


@dataclass(frozen=True)
class JobKind:
    name: str
    spec: type[BaseModel]
    run: Callable
    description: str = ""
    stages: Mapping[str, Resources] = field(default_factory=dict)
    internal: bool = False  # started by the service itself (ingest, export), not via POST /v1/jobs
    on_end: Callable | None = None  # on_end(ctx, state) when the job does not succeed
