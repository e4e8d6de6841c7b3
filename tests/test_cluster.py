"""A real multi-node Ray cluster on this machine (ray.cluster_utils.Cluster: a head and a worker
node, one CPU each), the service joining it from its own process, storage on the S3 test server:
a job's shard tasks run on both nodes, and a worker node removed mid-job costs only what it had
in flight."""
from __future__ import annotations

import io
import signal
import time

import httpx
import pyarrow.parquet as pq
import pytest

from tests.conftest import ALICE
from tests.corpus_gen import corpus
from tests.helpers import submit, upload, wait
from tests.net import free_port, start_service_process


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server):
    from ray.cluster_utils import Cluster
    nodes = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1})
    worker = nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    store = s3_server("cluster-store")
    port = free_port()
    proc = start_service_process(tmp_path_factory.mktemp("home"), port, nodes.address,
                                 THRESHER_STORAGE_URI=store, THRESHER_SHARD_SIZE="50",
                                 # these jobs test the heavy lane's shard tasks across nodes; the
                                 # light lane's two warm workers would take them otherwise
                                 THRESHER_LIGHT_MAX_DOCS="0")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=ALICE, timeout=60)
    client.nodes, client.worker = nodes, worker
    try:
        yield client
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        nodes.shutdown()


def nodes_used(job: dict) -> set[str]:
    return {node for per_stage in job["result"]["nodes"].values() for node in per_stage}


def test_shard_tasks_run_on_every_node(cluster):
    pool = upload(cluster, corpus(2000, seed=21, min_words=8, max_words=16), name="pool")
    target = upload(cluster, corpus(50, seed=22, domains=["astronomy"], prefix="t"), name="target")
    job = wait(cluster, submit(cluster, "dsir", {"pool": pool["id"], "target": target["id"],
                                                 "select": {"fraction": 0.1}})["id"], timeout=300)
    assert job["state"] == "succeeded", job
    assert nodes_used(job) == {cluster.nodes.head_node.node_id, cluster.worker.node_id}


def test_training_fits_on_one_node(cluster):
    """A training task runs on one node: it asks for the cores of the largest node, not of the
    whole cluster (two one-CPU nodes: a two-CPU task would wait forever, infeasible)."""
    pool = upload(cluster, corpus(300, seed=25), name="train-pool")
    job = wait(cluster, submit(cluster, "train_model", {"corpus": pool["id"], "preset": "tiny", "tokens": 4000,
                                                         "vocab_size": 300})["id"], timeout=180)
    assert job["state"] == "succeeded", job


def test_worker_node_removed_mid_job(cluster):
    rows = corpus(6000, seed=23, min_words=8, max_words=16)
    pool = upload(cluster, rows, name="big-pool")
    target = upload(cluster, corpus(50, seed=24, domains=["cooking"], prefix="t"), name="target")
    job = submit(cluster, "dsir", {"pool": pool["id"], "target": target["id"], "select": {"fraction": 0.1}})
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        progress = cluster.get(f"/v1/jobs/{job['id']}").json()["progress"]
        if progress["stage"] == "score" and progress["done"] >= 5:
            break
        time.sleep(0.05)
    assert progress["stage"] == "score" and progress["done"] < progress["total"], progress
    cluster.nodes.remove_node(cluster.worker)
    job = wait(cluster, job["id"], timeout=300)
    assert job["state"] == "succeeded", job
    table = pq.read_table(io.BytesIO(cluster.get(f"/v1/manifests/{job['result']['manifest_id']}/download").content))
    ids = table["doc_id"].to_pylist()
    assert len(ids) == len(set(ids)) == len(rows) and set(ids) == {r["id"] for r in rows}
