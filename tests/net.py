"""Local ports for the servers tests start (moto's S3, services in subprocesses)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def start_service_process(home, port, ray_address: str | None, timeout: float = 90, preload: str | None = None,
                          **env) -> subprocess.Popen:
    """`thresher serve` in a process of its own (so a test can kill it), ready when this returns:
    on the session's Ray at `ray_address`, or (None) starting a Ray of its own. `preload`: Python run
    first in that process (a test registering a job kind of its own)."""
    from tests.conftest import KEYS
    own = {k: v for k, v in os.environ.items() if ray_address or k not in ("RAY_ADDRESS", "THRESHER_RAY_ADDRESS")}
    env = {**own, **({"THRESHER_RAY_ADDRESS": ray_address} if ray_address else {}), "THRESHER_API_KEYS": ",".join(KEYS),
           **env}
    main = ["-c", f"{preload}\nfrom service.cli import app\napp(prog_name='thresher')"] if preload else ["-m", "service.cli"]
    proc = subprocess.Popen([sys.executable, *main, "serve", "--home", str(home), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("service did not become ready")
