"""One real local Ray for the whole test session; services under test join it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("THRESHER_NO_BF16", "0")
# Credentials for the S3 test server, set before the session's Ray starts so its workers have them
# too; the endpoint travels in the URIs (endpoint_override), as a user may choose.
for _name, _value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                      ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_EC2_METADATA_DISABLED", "true")):
    os.environ.setdefault(_name, _value)


@pytest.fixture(scope="session")
def ray_address():
    import ray
    if not ray.is_initialized():
        # "local": a new Ray of our own, even when another `ray start` cluster runs on this machine.
        ray.init(address="local", num_cpus=4, include_dashboard=False, namespace="thresher", log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """An S3-compatible server on 127.0.0.1 (moto's standalone server): pyarrow's real S3 client
    talks HTTP to it. Yields a function that makes a bucket and returns its URI with the endpoint and
    region as query options (credentials come from the environment, set above)."""
    import pyarrow.fs as pafs
    from tests.net import free_port, wait_for_port
    port = free_port()
    moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for_port(port, proc)
    options = f"endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"

    def bucket(name: str) -> str:
        fs, _ = pafs.FileSystem.from_uri(f"s3://{name}?{options}&allow_bucket_creation=true")
        fs.create_dir(name)
        return f"s3://{name}?{options}"
    bucket.port = port
    yield bucket
    proc.terminate()
    proc.wait(10)


KEYS = ["alice:key-alice", "bob:key-bob"]
ALICE = {"Authorization": "Bearer key-alice"}
BOB = {"Authorization": "Bearer key-bob"}


def make_settings(home, address, **over):
    from service.settings import Settings
    return Settings(**{"home": str(home), "ray_address": address, "api_keys": KEYS, "shard_size": 200,
                       "max_upload_bytes": 5_000_000, **over})


@pytest.fixture(scope="module")
def service(tmp_path_factory, ray_address):
    """A real app (catalog, storage, engine) on the session's Ray, driven through HTTP."""
    from fastapi.testclient import TestClient
    from service.app import create_app
    home = tmp_path_factory.mktemp("home")
    allowed = tmp_path_factory.mktemp("server-files")
    settings = make_settings(home, ray_address, allowed_roots=[str(allowed)])
    with TestClient(create_app(settings), headers=ALICE, client=("127.0.0.1", 50000)) as client:
        client.allowed_root = allowed
        yield client


@pytest.fixture(scope="session")
def live_service(tmp_path_factory, ray_address):
    """The real service listening on a free local port (uvicorn in a thread), for the Python
    client, the CLI and the README's shell examples. `.url`, `.key` (tenant alice), `.home`,
    `.allowed_root`."""
    import socket
    import threading
    import time
    import types

    import uvicorn
    from service.app import create_app
    home = tmp_path_factory.mktemp("live-home")
    allowed = tmp_path_factory.mktemp("live-files")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = make_settings(home, ray_address, allowed_roots=[str(allowed)], port=port)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the live service did not start"
        time.sleep(0.05)
    yield types.SimpleNamespace(url=f"http://127.0.0.1:{port}", key="key-alice", home=home,
                                allowed_root=allowed, settings=settings)
    server.should_exit = True
    thread.join(timeout=30)
