"""`make demo`: a two-minute tour of Thresher through its own command line.

Generates a pool of short documents from three synthetic domains and a small target set from one of
them, starts `thresher serve` on a free loopback port, then runs the CLI as a user would (each
command is printed before it runs): upload, a DSIR selection of 10% of the pool toward the target,
the manifest, a query of selected documents per source, and a CSV download of the selected rows.
The service is stopped at the end, also on error or Ctrl-C.
"""
import csv
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from rich.console import Console

DEMO_DIR = Path(".thresher-demo")
DEMO_KEY = "demo-key"
console = Console()

COMMON_WORDS = ("the a of and to in is that it for on with as was by this are be from at or an "
                "which have not but their its also more one can has been these were other some "
                "into than them only over such after most new first two may then between").split()
DOMAIN_WORDS = {
    "astronomy": ("star galaxy orbit planet telescope nebula comet asteroid redshift supernova "
                  "luminosity parallax eclipse quasar pulsar spectrum gravity moon solar lunar "
                  "cosmic radiation exoplanet dwarf giant cluster photometry horizon meteor "
                  "orbital observatory infrared magnitude celestial equinox perihelion").split(),
    "cooking": ("flour butter oven simmer garlic onion recipe sauce bake roast pepper salt sugar "
                "dough knead whisk skillet broth herbs saute marinade vinegar olive caramelize "
                "yeast pastry braise chop grill stew tablespoon teaspoon dessert crust").split(),
    "law": ("court statute plaintiff defendant contract tort appeal judge verdict counsel "
            "liability clause jurisdiction precedent testimony damages injunction breach "
            "arbitration tenant lease evidence ruling motion filing attorney settlement "
            "negligence remedy covenant indemnity trial").split(),
}
POOL_SIZES = {"cooking": 1400, "law": 1200, "astronomy": 400}
TARGET_DOMAIN, TARGET_SIZE, SELECT_FRACTION = "astronomy", 300, 0.10


def make_document(rng: random.Random, domain: str) -> str:
    """A few sentences mixing common words, the domain's vocabulary and a little of the others'."""
    others = [w for d, words in DOMAIN_WORDS.items() if d != domain for w in words]
    sentences = []
    for _ in range(rng.randint(2, 4)):
        words = []
        for _ in range(rng.randint(6, 14)):
            roll = rng.random()
            pool = DOMAIN_WORDS[domain] if roll < 0.4 else others if roll < 0.47 else COMMON_WORDS
            words.append(rng.choice(pool))
        sentences.append(" ".join(words).capitalize() + ".")
    return " ".join(sentences)


def write_corpora(directory: Path, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    pool = [(domain, i) for domain, n in POOL_SIZES.items() for i in range(n)]
    rng.shuffle(pool)
    pool_path, target_path = directory / "pool.jsonl", directory / "target.jsonl"
    with pool_path.open("w") as f:
        for domain, i in pool:
            f.write(json.dumps({"id": f"{domain}-{i:05d}", "source": domain,
                                "text": make_document(rng, domain)}) + "\n")
    with target_path.open("w") as f:
        for i in range(TARGET_SIZE):
            f.write(json.dumps({"id": f"target-{i:05d}", "source": TARGET_DOMAIN,
                                "text": make_document(rng, TARGET_DOMAIN)}) + "\n")
    return pool_path, target_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Demo:
    def __init__(self, directory: Path):
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "THRESHER_URL": self.url, "THRESHER_KEY": DEMO_KEY,
                    "COLUMNS": os.environ.get("COLUMNS", "120")}
        self.server: subprocess.Popen | None = None
        self.server_log = directory / "server.log"

    def start_server(self, timeout_s: float = 180.0) -> None:
        home = self.directory / "home"
        env = {**self.env, "THRESHER_API_KEYS": f"demo:{DEMO_KEY}"}
        env.pop("RAY_ADDRESS", None)  # the demo runs its own local Ray, never a shared cluster
        command = ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--home", str(home)]
        self.show(command)
        # Its own session, so a Ctrl-C meant for the demo reaches the server only through stop().
        self.server = subprocess.Popen([sys.executable, "-m", "service.cli", *command], env=env,
                                       stdout=self.server_log.open("wb"), stderr=subprocess.STDOUT,
                                       start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise RuntimeError(f"thresher serve exited ({self.server.returncode}); "
                                   f"see {self.server_log}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    console.print(f"[dim]server ready at {self.url} (log: {self.server_log})[/]")
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"thresher serve was not ready after {timeout_s:.0f}s; see {self.server_log}")

    def stop_server(self) -> None:
        if self.server is None or self.server.poll() is not None:
            return
        # SIGINT, not SIGTERM: the Ray driver inside the server replaces uvicorn's SIGTERM handler
        # with a plain exit, which would skip the app's shutdown (engine stop, catalog close).
        self.server.send_signal(signal.SIGINT)
        try:
            self.server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.server.pid, signal.SIGKILL)  # the group this demo started, nothing else
            self.server.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.server_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @staticmethod
    def show(args: list[str]) -> None:
        console.print(f"[bold green]$[/] thresher {shlex.join(args)}", highlight=False,
                      soft_wrap=True)

    def cli(self, *args: str) -> None:
        """Run a CLI command with its output going straight to the terminal."""
        self.show(list(args))
        subprocess.run([sys.executable, "-m", "service.cli", *args], env=self.env, check=True)

    def cli_json(self, *args: str) -> dict:
        """Run a CLI command with --json and return its answer."""
        self.show([*args, "--json"])
        done = subprocess.run([sys.executable, "-m", "service.cli", *args, "--json"], env=self.env,
                              check=True, stdout=subprocess.PIPE, text=True)
        return json.loads(done.stdout)

    def run(self) -> None:
        started = time.monotonic()
        console.rule("1. Sample data")
        pool_path, target_path = write_corpora(self.directory)
        console.print(f"pool: {sum(POOL_SIZES.values())} documents from {', '.join(POOL_SIZES)} "
                      f"-> {pool_path}\ntarget: {TARGET_SIZE} {TARGET_DOMAIN} documents -> {target_path}")

        console.rule("2. Start the service")
        self.start_server()

        console.rule("3. Upload the pool and the target")
        pool = self.cli_json("corpora", "upload", str(pool_path), "--name", "demo-pool")
        console.print(f"  -> {pool['id']}: {pool.get('num_docs')} docs, sources {pool.get('sources')}",
                      soft_wrap=True)
        target = self.cli_json("corpora", "upload", str(target_path), "--name", "demo-target")
        console.print(f"  -> {target['id']}: {target.get('num_docs')} docs")
        self.cli("corpora", "list")

        console.rule(f"4. DSIR: select {SELECT_FRACTION:.0%} of the pool toward the target")
        spec = {"pool": pool["id"], "target": target["id"],
                "select": {"fraction": SELECT_FRACTION}, "seed": 0}
        job = self.cli_json("jobs", "submit", "dsir", "--name", "demo-dsir",
                            "--spec", json.dumps(spec))
        self.cli("jobs", "watch", job["id"])
        manifest_id = self.cli_json("jobs", "show", job["id"])["result"]["manifest_id"]

        console.rule("5. The selection manifest")
        self.cli("manifests", "show", manifest_id)
        self.cli("manifests", "query", "--table", f"m={manifest_id}",
                 "SELECT source, count(*) FILTER (WHERE selected) AS selected, count(*) AS pool, "
                 "round(avg(score) FILTER (WHERE selected), 2) AS mean_selected_score "
                 "FROM m GROUP BY source ORDER BY selected DESC")
        selected_csv = self.directory / "selected.csv"
        self.cli("manifests", "download", manifest_id, "--format", "csv", "--selected-only",
                 "-o", str(selected_csv))

        with selected_csv.open(newline="") as f:
            sources = [row.get("source") for row in csv.DictReader(f)]
        on_target = sources.count(TARGET_DOMAIN)

        console.rule("Done")
        console.print(f"In {time.monotonic() - started:.0f}s: DSIR picked {len(sources)} documents "
                      f"({SELECT_FRACTION:.0%} of the pool) toward {TARGET_DOMAIN}; {on_target} of "
                      f"them are {TARGET_DOMAIN} ({on_target / max(len(sources), 1):.0%}), which is "
                      f"{POOL_SIZES[TARGET_DOMAIN] / sum(POOL_SIZES.values()):.0%} of the pool.\n"
                      f"  selected rows: {selected_csv}\n  service home:  {self.directory / 'home'}"
                      f"\n  server log:    {self.server_log}", highlight=False)


def main() -> int:
    shutil.rmtree(DEMO_DIR, ignore_errors=True)  # a fresh catalog each run
    DEMO_DIR.mkdir(parents=True)
    demo = Demo(DEMO_DIR)
    try:
        demo.run()
        return 0
    except subprocess.CalledProcessError as exc:
        console.print(f"demo step failed: thresher {shlex.join(map(str, exc.cmd[3:]))} "
                      f"(exit {exc.returncode})", style="red", markup=False, highlight=False)
        console.print(f"server log tail ({demo.server_log}):\n{demo.log_tail()}", markup=False,
                      highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    except RuntimeError as exc:
        console.print(str(exc), style="red", markup=False, highlight=False)
        return 1
    finally:
        demo.stop_server()


if __name__ == "__main__":
    sys.exit(main())
