"""DataTrove's MinHash deduplication, as its README and examples run it, for bench/curation.py.

Runs under the bench's own virtualenv (bench/.venv-datatrove, never the project's):

    bench/.venv-datatrove/bin/python bench/datatrove_minhash.py IN_DIR WORK_DIR WORKERS

IN_DIR holds JSONL files (id, text). Stages: signatures (one task per file), buckets (one task per
band), cluster (one task: DataTrove's union-find), filter (one task per file, cluster ids loaded).
Writes WORK_DIR/clusters.jsonl: {"id", "cluster"} of every document that is in a cluster, and
prints a JSON line {"stage_seconds": {...}}.
"""
from __future__ import annotations

import json
import os
import sys
import time

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter, MinhashDedupSignature)
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers.jsonl import JsonlWriter
from datatrove.utils.hashing import HashConfig


def main(in_dir: str, work: str, workers: int) -> None:
    files = sorted(f for f in os.listdir(in_dir) if f.endswith(".jsonl"))
    config = MinhashConfig(hash_config=HashConfig(precision=64), num_buckets=14, hashes_per_bucket=8, n_grams=5)
    reader = lambda: JsonlReader(in_dir, glob_pattern="*.jsonl")  # noqa: E731 - a fresh reader per stage
    logs = os.path.join(work, "logs")
    stages = {
        "signatures": LocalPipelineExecutor(
            pipeline=[reader(), MinhashDedupSignature(output_folder=f"{work}/signatures", config=config)],
            tasks=len(files), workers=workers, logging_dir=f"{logs}/signatures"),
        "buckets": LocalPipelineExecutor(
            pipeline=[MinhashDedupBuckets(input_folder=f"{work}/signatures", output_folder=f"{work}/buckets",
                                          config=config)],
            tasks=config.num_buckets, workers=workers, logging_dir=f"{logs}/buckets"),
        "cluster": LocalPipelineExecutor(
            pipeline=[MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids",
                                          config=config, save_cluster_id=True)],
            tasks=1, logging_dir=f"{logs}/cluster"),
        "filter": LocalPipelineExecutor(
            pipeline=[reader(), MinhashDedupFilter(input_folder=f"{work}/remove_ids", load_cluster_ids=True,
                                                   exclusion_writer=JsonlWriter(f"{work}/removed", compression=None)),
                      JsonlWriter(f"{work}/kept", compression=None)],
            tasks=len(files), workers=workers, logging_dir=f"{logs}/filter"),
    }
    seconds = {}
    for name, executor in stages.items():
        t0 = time.perf_counter()
        executor.run()
        seconds[name] = time.perf_counter() - t0
    with open(os.path.join(work, "clusters.jsonl"), "w") as out:
        for folder in ("kept", "removed"):
            for name in sorted(os.listdir(os.path.join(work, folder))):
                with open(os.path.join(work, folder, name)) as f:
                    for line in f:
                        doc = json.loads(line)
                        cluster = doc.get("metadata", {}).get("minhash_cluster_id", -1)
                        if cluster != -1:
                            out.write(json.dumps({"id": doc["id"], "cluster": cluster}) + "\n")
    print(json.dumps({"stage_seconds": seconds}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
