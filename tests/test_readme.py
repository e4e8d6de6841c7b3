"""README.md's examples run as written: every fenced `sh` and `python` block, in order, in one
scratch directory, against the live test service ($THRESHER_URL / $THRESHER_KEY point at it).
A block preceded by `<!-- not run: reason -->` is skipped (setup commands such as `make test`)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(?:<!-- not run: (?P<skip>[^>]*?) -->\s*\n)?```(?P<lang>sh|python)\n(?P<code>.*?)```", re.S)


def readme_blocks() -> list[tuple[str, str, str | None]]:
    return [(m["lang"], m["code"], m["skip"]) for m in BLOCK.finditer((ROOT / "README.md").read_text())]


def test_readme_has_runnable_examples():
    blocks = readme_blocks()
    run = [b for b in blocks if b[2] is None]
    assert {b[0] for b in run} == {"sh", "python"} and len(run) >= 3
    assert all(b[2].strip() for b in blocks if b[2] is not None)      # every skip says why


def environment(live_service) -> dict:
    return {**os.environ, "THRESHER_URL": live_service.url, "THRESHER_KEY": live_service.key,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def test_readme_examples_run_as_written(live_service, tmp_path):
    env = environment(live_service)
    for i, (lang, code, skip) in enumerate(readme_blocks()):
        if skip is not None:
            continue
        cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "sh" else [sys.executable, "-c", code]
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"README block {i} ({lang}) failed:\n{code}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"


def test_select_and_train_example(live_service, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "select_and_train.py")], cwd=tmp_path,
                       env=environment(live_service), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "selected by source" in r.stdout and "epoch 1" in r.stdout
