"""README.md's examples run as written: every fenced `sh` and `python` block, in order, in one
scratch directory, against the live test service ($THRESHER_URL / $THRESHER_KEY point at it).
A block preceded by `<!-- not run: reason -->` is skipped (setup commands such as `make test`).

The examples run from the checkout's root after `make install`: the scratch directory holds a
`.venv` link to the checkout's, and shell blocks run in a new `bash` with a bare environment (a
system PATH without the venv), as a user's new shell would."""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
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


SYSTEM_PATH = "/usr/local/bin:/usr/bin:/bin"


def checkout_like(tmp_path: Path) -> Path:
    """A scratch directory that looks like the checkout's root to the examples: `.venv` is there."""
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    return tmp_path


def fresh_shell(code: str, live_service, cwd: Path) -> subprocess.CompletedProcess:
    """`code` in a new bash with nothing inherited but the service's address and key."""
    env = {"PATH": SYSTEM_PATH, "HOME": str(cwd), "LANG": "C.UTF-8",
           "THRESHER_URL": live_service.url, "THRESHER_KEY": live_service.key}
    return subprocess.run(["bash", "--noprofile", "--norc", "-euo", "pipefail", "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_readme_examples_run_as_written(live_service, tmp_path):
    cwd = checkout_like(tmp_path)
    for i, (lang, code, skip) in enumerate(readme_blocks()):
        if skip is not None:
            continue
        if lang == "sh":
            r = fresh_shell(code, live_service, cwd)
        else:
            r = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=environment(live_service),
                               capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"README block {i} ({lang}) failed:\n{code}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"


def test_readme_cli_block_runs_in_a_fresh_shell(live_service, tmp_path):
    """The CLI block as written, in a new shell whose PATH lacks the venv (`thresher: command not
    found` unless the block itself says how `thresher` gets on the PATH)."""
    assert shutil.which("thresher", path=SYSTEM_PATH) is None
    [cli] = [code for lang, code, skip in readme_blocks() if lang == "sh" and "thresher corpora upload" in code]
    cwd = checkout_like(tmp_path)
    docs = [{"id": f"d{i}", "source": s, "text": f"{s} words number {i} " * 5}
            for i, s in enumerate(["cooking", "astronomy", "finance"] * 40)]
    with gzip.open(cwd / "pool.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    (cwd / "target.jsonl").write_text("".join(json.dumps({"text": d["text"]}) + "\n"
                                              for d in docs if d["source"] == "astronomy"))
    r = fresh_shell(cli, live_service, cwd)
    assert r.returncode == 0, f"--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}"
    header, *rows = (cwd / "selected.csv").read_text().splitlines()    # CSV, as the file name says
    assert "doc_id" in header and "," in header and len(rows) == 12


def test_select_and_train_example(live_service, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "select_and_train.py")], cwd=tmp_path,
                       env=environment(live_service), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "selected by source" in r.stdout and "epoch 1" in r.stdout
