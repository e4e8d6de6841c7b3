"""`thresher` command line.

Every command except `serve` is a thin HTTP client of the API (/work/shared/API.md): it never
imports workers/ or storage/, so it works the same against a local server and a remote cluster.
`serve` runs the API itself; its imports are deferred so the client commands stay light.
"""
import functools
import ipaddress
import json
import os
import re
import time
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Iterator, Optional

import httpx
import typer
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn,
                           TransferSpeedColumn)
from rich.table import Table

DEFAULT_URL = "http://127.0.0.1:8321"
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
STATE_STYLES = {"queued": "yellow", "ingesting": "yellow", "running": "cyan", "ready": "green",
                "succeeded": "green", "failed": "red", "cancelled": "magenta"}
CHUNK_BYTES = 1 << 20

out = Console()
err = Console(stderr=True)

app = typer.Typer(name="thresher", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Thresher: data selection and pretraining curation as a service.")
corpora_app = typer.Typer(no_args_is_help=True, help="Upload and inspect corpora.")
jobs_app = typer.Typer(no_args_is_help=True, help="Submit, follow and cancel jobs.")
manifests_app = typer.Typer(no_args_is_help=True, help="Inspect, download and query manifests.")
app.add_typer(corpora_app, name="corpora")
app.add_typer(jobs_app, name="jobs")
app.add_typer(manifests_app, name="manifests")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the raw JSON answer.")]
LimitOption = Annotated[int, typer.Option(min=1, max=1000, help="Items per page.")]
CursorOption = Annotated[Optional[str], typer.Option(help="Page cursor from a previous list.")]


class CorpusFormat(str, Enum):
    jsonl = "jsonl"
    parquet = "parquet"
    csv = "csv"


class ManifestFormat(str, Enum):
    parquet = "parquet"
    csv = "csv"
    jsonl = "jsonl"


# ----------------------------------------------------------------------------- HTTP client

class ApiError(Exception):
    """A non-2xx answer, carrying the API's `{"error": {code, message, details}}` body."""

    def __init__(self, status: int, code: str, message: str, details: Optional[dict] = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details or {}


class ServerUnreachable(Exception):
    def __init__(self, url: str, cause: Exception):
        super().__init__(f"{url}: {cause}")
        self.url, self.cause = url, cause


def api_error_from_response(response: httpx.Response) -> ApiError:
    """Decode the error envelope; fall back to the raw text when a proxy or crash answered instead."""
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, str(error.get("code") or "error"),
                        str(error.get("message") or ""), error.get("details") or {})
    except (ValueError, KeyError, TypeError, AttributeError):
        text = response.text.strip()[:500] or response.reason_phrase
        return ApiError(response.status_code, f"http_{response.status_code}", text)


def format_api_error(error: ApiError) -> str:
    lines = [f"Error {error.status} ({error.code}): {error.message}"]
    for name, value in error.details.items():
        shown = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
        lines.append(f"  {name}: {shown}")
    return "\n".join(lines)


class ApiClient:
    def __init__(self, base_url: str, key: Optional[str] = None, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        headers = {"User-Agent": "thresher-cli"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.base_url, exc) from exc
        if response.is_error:
            raise api_error_from_response(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        try:
            with self.http.stream(method, path, **kwargs) as response:
                if response.is_error:
                    response.read()
                    raise api_error_from_response(response)
                yield response
        except httpx.TransportError as exc:
            raise ServerUnreachable(self.base_url, exc) from exc


def reports_api_errors(command: Callable) -> Callable:
    """Turn API and connection errors into a clear message on stderr and exit status 1."""
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ApiError as exc:
            err.print(format_api_error(exc), style="red", markup=False, soft_wrap=True,
                      highlight=False)
        except ServerUnreachable as exc:
            err.print(f"Cannot reach the Thresher API at {exc.url} ({exc.cause}). Is `thresher "
                      "serve` running? Point --url / THRESHER_URL at it.",
                      style="red", markup=False, soft_wrap=True)
        raise typer.Exit(1)
    return wrapper


def client_of(ctx: typer.Context) -> ApiClient:
    url, key = ctx.find_root().obj
    return ApiClient(url, key)


@app.callback()
def main(ctx: typer.Context,
         url: Annotated[str, typer.Option(envvar="THRESHER_URL", help="API base URL.")] = DEFAULT_URL,
         key: Annotated[Optional[str], typer.Option(envvar="THRESHER_KEY", show_default=False,
                                                    help="API key, sent as a Bearer token.")] = None):
    ctx.obj = (url, key)


# ----------------------------------------------------------------------------- parsing helpers

def parse_spec(value: str) -> dict:
    """`--spec` is a JSON object, or `@path` naming a file that holds one."""
    text = value
    if value.startswith("@"):
        try:
            text = Path(value[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise typer.BadParameter(f"cannot read spec file {value[1:]!r}: {exc.strerror}",
                                     param_hint="'--spec'") from exc
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
                                 param_hint="'--spec'") from exc
    if not isinstance(spec, dict):
        raise typer.BadParameter(f"must be a JSON object, got {type(spec).__name__}",
                                 param_hint="'--spec'")
    return spec


def parse_table_bindings(bindings: Iterable[str]) -> dict[str, str]:
    """`--table m=man_123` binds the SQL name `m` to a manifest id."""
    tables = {}
    for binding in bindings:
        alias, sep, manifest_id = binding.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", alias) or not manifest_id:
            raise typer.BadParameter(f"{binding!r} must look like NAME=MANIFEST_ID",
                                     param_hint="'--table'")
        tables[alias] = manifest_id
    return tables


COMPRESSION_SUFFIXES = {".gz": "application/gzip", ".zst": "application/zstd",
                        ".zstd": "application/zstd"}
FORMAT_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
                   ".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def infer_format(path: Path) -> str:
    """The format named by the file's suffix, looking past a .gz/.zst compression suffix."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes.pop()
    if suffixes and suffixes[-1] in FORMAT_SUFFIXES:
        return FORMAT_SUFFIXES[suffixes[-1]]
    raise typer.BadParameter(f"cannot tell the format of {path.name!r} from its name; pass --format",
                             param_hint="'--format'")


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------- rendering

def print_raw_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def format_count(done: Optional[float], total: Optional[float], unit: Optional[str]) -> str:
    suffix = f" {unit}" if unit else ""
    if done is None:
        return ""
    if total:
        return f"{done:,.0f}/{total:,.0f}{suffix}"
    return f"{done:,.0f}{suffix}"


def format_rate(rate: Optional[float], unit: Optional[str]) -> str:
    if not rate:
        return ""
    return f"{rate:,.0f} {unit or 'items'}/s" if rate >= 10 else f"{rate:.2f} {unit or 'items'}/s"


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def format_cell(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def styled_state(state: Optional[str]) -> str:
    state = state or "?"
    return f"[{STATE_STYLES.get(state, 'white')}]{state}[/]"


def print_record(title: str, record: dict, fields: Iterable[str]) -> None:
    """A two-column table of the named fields that the record has."""
    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name in fields:
        if name not in record:
            continue
        value = record[name]
        table.add_row(name, styled_state(value) if name == "state" else format_cell(value))
    out.print(table)


def print_page(table: Table, page: dict) -> None:
    out.print(table)
    if page.get("next_cursor"):
        out.print(f"[dim]More: --cursor {page['next_cursor']}[/]")


# ----------------------------------------------------------------------------- corpora

CORPUS_FIELDS = ("id", "name", "state", "num_docs", "num_bytes", "num_shards", "sources",
                 "created_at", "job_id")


def transfer_progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), console=err, transient=True, disable=not err.is_terminal)


def read_chunks(file: Any, on_chunk: Callable[[int], None]) -> Iterator[bytes]:
    while chunk := file.read(CHUNK_BYTES):
        on_chunk(len(chunk))
        yield chunk


@corpora_app.command("upload")
@reports_api_errors
def corpora_upload(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                         help="JSONL, Parquet or CSV file (.gz/.zst accepted).")],
    name: Annotated[str, typer.Option(help="Corpus name.")],
    format: Annotated[Optional[CorpusFormat], typer.Option(
        help="File format; default: from the file name.")] = None,
    text_field: Annotated[Optional[str], typer.Option(help="Text column (server default: text).")] = None,
    id_field: Annotated[Optional[str], typer.Option(help="Id column (server default: id).")] = None,
    source_field: Annotated[Optional[str], typer.Option(
        help="Source column (server default: source).")] = None,
    as_json: JsonFlag = False,
):
    """Upload a file as a new corpus (streamed as the request body)."""
    params = {"name": name, "format": format.value if format else infer_format(path),
              # The body carries no file name; this lets the server detect .gz/.zst by name too.
              "filename": path.name}
    for field, value in (("text_field", text_field), ("id_field", id_field),
                         ("source_field", source_field)):
        if value is not None:
            params[field] = value
    size = path.stat().st_size
    content_type = COMPRESSION_SUFFIXES.get(path.suffix.lower(), "application/octet-stream")
    with path.open("rb") as file, transfer_progress() as progress:
        task = progress.add_task(f"Uploading {path.name}", total=size)
        body = read_chunks(file, lambda n: progress.advance(task, n))
        # An explicit Content-Length keeps the streamed body out of chunked encoding, so the
        # server can refuse an oversized upload before reading it.
        corpus = client_of(ctx).json(
            "POST", "/v1/corpora", params=params, content=body,
            headers={"Content-Length": str(size), "Content-Type": content_type},
            timeout=httpx.Timeout(30.0, read=3600.0))
    if as_json:
        print_raw_json(corpus)
    else:
        print_record(f"Uploaded corpus {corpus.get('id')}", corpus, CORPUS_FIELDS)


@corpora_app.command("list")
@reports_api_errors
def corpora_list(ctx: typer.Context, limit: LimitOption = 50, cursor: CursorOption = None,
                 as_json: JsonFlag = False):
    """List corpora, newest first."""
    params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
    page = client_of(ctx).json("GET", "/v1/corpora", params=params)
    if as_json:
        return print_raw_json(page)
    table = Table("id", "name", "state", "docs", "shards", "sources", "created")
    for corpus in page.get("items", []):
        sources = ", ".join(f"{k}:{v}" for k, v in (corpus.get("sources") or {}).items())
        table.add_row(corpus.get("id"), corpus.get("name"), styled_state(corpus.get("state")),
                      format_cell(corpus.get("num_docs")), format_cell(corpus.get("num_shards")),
                      sources, format_cell(corpus.get("created_at")))
    print_page(table, page)


@corpora_app.command("show")
@reports_api_errors
def corpora_show(ctx: typer.Context, corpus_id: Annotated[str, typer.Argument(help="Corpus id.")],
                 as_json: JsonFlag = False):
    """Show one corpus."""
    corpus = client_of(ctx).json("GET", f"/v1/corpora/{corpus_id}")
    if as_json:
        return print_raw_json(corpus)
    print_record(f"Corpus {corpus_id}", corpus, CORPUS_FIELDS)


# ----------------------------------------------------------------------------- jobs

JOB_FIELDS = ("id", "kind", "name", "state", "created_at", "started_at", "finished_at")


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs of a text/event-stream; an event left unterminated at EOF is dropped."""
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value


def job_events(client: ApiClient, job_id: str) -> Iterator[dict]:
    """Job objects pushed by GET /v1/jobs/{id}/events."""
    timeout = httpx.Timeout(30.0, read=120.0)
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout,
                       headers={"Accept": "text/event-stream"}) as response:
        for _, data in parse_sse(response.iter_lines()):
            try:
                job = json.loads(data)
            except ValueError:
                continue
            if isinstance(job, dict) and "state" in job:
                yield job


def follow_job(client: ApiClient, job_id: str, on_update: Callable[[dict], None],
               poll_interval: float = 1.0) -> dict:
    """Report every change of the job until it ends; returns the final job object.

    Server-sent events first; if the stream cannot be opened or breaks, poll GET /v1/jobs/{id}.
    """
    job = client.json("GET", f"/v1/jobs/{job_id}")  # a wrong id fails here, clearly
    on_update(job)
    if job.get("state") in TERMINAL_STATES:
        return job
    try:
        for job in job_events(client, job_id):
            on_update(job)
            if job.get("state") in TERMINAL_STATES:
                return job
    except (ApiError, ServerUnreachable, httpx.HTTPError):
        pass
    while True:
        job = client.json("GET", f"/v1/jobs/{job_id}")
        on_update(job)
        if job.get("state") in TERMINAL_STATES:
            return job
        time.sleep(poll_interval)


class JobProgressView:
    """A live bar on a terminal; otherwise one line per state/stage change or quarter of progress."""

    def __init__(self, console: Console):
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("{task.fields[state]}"), TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.fields[count]}"), TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[eta]}"), TimeElapsedColumn(), console=console,
            disable=not self.live)
        self.task = None
        self.last_line_key = None

    def __enter__(self) -> "JobProgressView":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def update(self, job: dict) -> None:
        progress = job.get("progress") or {}
        stage, done, total = progress.get("stage") or "", progress.get("done"), progress.get("total")
        unit = progress.get("unit")
        eta = progress.get("eta_s")
        fields = {"state": styled_state(job.get("state")), "count": format_count(done, total, unit),
                  "rate": format_rate(progress.get("rate_per_s"), unit),
                  "eta": f"ETA {format_duration(eta)}" if eta is not None else ""}
        if self.live:
            if self.task is None:
                self.task = self.progress.add_task(stage, total=None, **fields)
            self.progress.update(self.task, description=stage, total=total or None,
                                 completed=done or 0, **fields)
            return
        quarter = int(4 * done / total) if done is not None and total else None
        line_key = (job.get("state"), stage, quarter)
        if line_key != self.last_line_key:
            self.last_line_key = line_key
            self.console.print("  ".join(v for v in (fields["state"], stage, fields["count"],
                                                      fields["rate"], fields["eta"]) if v))


def watch_job(client: ApiClient, job_id: str) -> None:
    """Follow a job to its end; exit status 1 unless it succeeded."""
    with JobProgressView(out) as view:
        job = follow_job(client, job_id, view.update)
    state = job.get("state")
    if state == "succeeded":
        result = job.get("result") or {}
        produced = ", ".join(f"{k}={v}" for k, v in result.items() if k.endswith("_id") and v)
        out.print(f"Job {job_id} {styled_state(state)}" + (f": {produced}" if produced else ""))
        return
    error = job.get("error") or {}
    err.print(f"Job {job_id} {state}" + (f" ({error.get('code')}): {error.get('message')}"
                                          if error else ""), style="red", markup=False, soft_wrap=True)
    raise typer.Exit(1)


@jobs_app.command("submit")
@reports_api_errors
def jobs_submit(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="Job kind: random, dsir, color_filter, train_model, "
                                             "score, evaluate, reweight, curriculum, projection.")],
    spec: Annotated[str, typer.Option(help="Job spec: a JSON object, or @path to a JSON file.")],
    name: Annotated[Optional[str], typer.Option(help="Job name; default: the kind.")] = None,
    idempotency_key: Annotated[Optional[str], typer.Option(
        help="Resubmitting the same key and body returns the same job.")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the job until it ends.")] = False,
    as_json: JsonFlag = False,
):
    """Submit a job."""
    body = {"kind": kind, "name": name or kind, "spec": parse_spec(spec)}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    client = client_of(ctx)
    job = client.json("POST", "/v1/jobs", json=body, headers=headers)
    if as_json:
        print_raw_json(job)
    else:
        out.print(f"Submitted job [bold]{job.get('id')}[/] ({kind}), {styled_state(job.get('state'))}")
    if watch:
        watch_job(client, job["id"])


@jobs_app.command("watch")
@reports_api_errors
def jobs_watch(ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="Job id.")]):
    """Follow a job's progress live; exits non-zero if it failed or was cancelled."""
    watch_job(client_of(ctx), job_id)


@jobs_app.command("list")
@reports_api_errors
def jobs_list(ctx: typer.Context, limit: LimitOption = 50, cursor: CursorOption = None,
              as_json: JsonFlag = False):
    """List jobs, newest first."""
    params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
    page = client_of(ctx).json("GET", "/v1/jobs", params=params)
    if as_json:
        return print_raw_json(page)
    table = Table("id", "kind", "name", "state", "progress", "created")
    for job in page.get("items", []):
        progress = job.get("progress") or {}
        table.add_row(job.get("id"), job.get("kind"), job.get("name"), styled_state(job.get("state")),
                      " ".join(filter(None, (progress.get("stage"), format_count(
                          progress.get("done"), progress.get("total"), progress.get("unit"))))),
                      format_cell(job.get("created_at")))
    print_page(table, page)


@jobs_app.command("show")
@reports_api_errors
def jobs_show(ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="Job id.")],
              as_json: JsonFlag = False):
    """Show one job: state, progress, error and result."""
    job = client_of(ctx).json("GET", f"/v1/jobs/{job_id}")
    if as_json:
        return print_raw_json(job)
    print_record(f"Job {job_id}", job, JOB_FIELDS)
    progress = job.get("progress") or {}
    if progress:
        out.print("[bold]progress[/] " + "  ".join(filter(None, (
            progress.get("stage"), format_count(progress.get("done"), progress.get("total"),
                                                progress.get("unit")),
            format_rate(progress.get("rate_per_s"), progress.get("unit"))))))
    if job.get("error"):
        out.print(f"[bold red]error[/] {job['error'].get('code')}: {job['error'].get('message')}",
                  markup=True, highlight=False)
    if job.get("result"):
        out.print("[bold]result[/]")
        out.print_json(data=job["result"])


@jobs_app.command("cancel")
@reports_api_errors
def jobs_cancel(ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="Job id.")],
                as_json: JsonFlag = False):
    """Cancel a queued or running job."""
    job = client_of(ctx).json("POST", f"/v1/jobs/{job_id}/cancel")
    if as_json:
        return print_raw_json(job)
    out.print(f"Job {job_id}: {styled_state(job.get('state'))}")


# ----------------------------------------------------------------------------- manifests

MANIFEST_FIELDS = ("id", "job_id", "kind", "num_rows", "num_selected", "num_shards", "created_at")


@manifests_app.command("show")
@reports_api_errors
def manifests_show(ctx: typer.Context, manifest_id: Annotated[str, typer.Argument(help="Manifest id.")],
                   as_json: JsonFlag = False):
    """Show a manifest's size and columns."""
    manifest = client_of(ctx).json("GET", f"/v1/manifests/{manifest_id}")
    if as_json:
        return print_raw_json(manifest)
    print_record(f"Manifest {manifest_id}", manifest, MANIFEST_FIELDS)
    columns = manifest.get("columns") or []
    if columns:
        out.print("[bold]columns[/] " + ", ".join(
            f"{c.get('name')}:{c.get('type')}" if isinstance(c, dict) else str(c) for c in columns))


@manifests_app.command("download")
@reports_api_errors
def manifests_download(
    ctx: typer.Context,
    manifest_id: Annotated[str, typer.Argument(help="Manifest id.")],
    output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, help="File to write.")],
    format: Annotated[ManifestFormat, typer.Option(help="File format.")] = ManifestFormat.parquet,
    selected_only: Annotated[bool, typer.Option("--selected-only",
                                                help="Only the selected rows.")] = False,
):
    """Download a manifest, streamed to disk."""
    params = {"format": format.value, "selected_only": str(selected_only).lower()}
    # Write beside the target and rename at the end, so a broken download leaves no half file.
    partial = output.with_name(output.name + ".part")
    written = 0
    try:
        with client_of(ctx).stream("GET", f"/v1/manifests/{manifest_id}/download", params=params,
                                   timeout=httpx.Timeout(30.0, read=600.0)) as response, \
                transfer_progress() as progress, partial.open("wb") as file:
            length = response.headers.get("Content-Length")
            task = progress.add_task(f"Downloading {output.name}", total=int(length) if length else None)
            for chunk in response.iter_bytes(CHUNK_BYTES):
                file.write(chunk)
                written += len(chunk)
                progress.advance(task, len(chunk))
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    out.print(f"Wrote {output} ({written:,} bytes, {format.value}"
              f"{', selected rows only' if selected_only else ''})")


@manifests_app.command("query")
@reports_api_errors
def manifests_query(
    ctx: typer.Context,
    sql: Annotated[str, typer.Argument(help="Read-only SQL over the bound tables.")],
    table: Annotated[list[str], typer.Option(
        "--table", "-t", help="NAME=MANIFEST_ID binding a manifest to a table name; repeatable.")],
    limit: Annotated[Optional[int], typer.Option(min=1, help="Row limit (server default 1000).")] = None,
    as_json: JsonFlag = False,
):
    """Run a read-only DuckDB query over manifests and print the rows."""
    body: dict[str, Any] = {"sql": sql, "tables": parse_table_bindings(table)}
    if limit is not None:
        body["limit"] = limit
    answer = client_of(ctx).json("POST", "/v1/query", json=body,
                                 timeout=httpx.Timeout(30.0, read=300.0))
    if as_json:
        return print_raw_json(answer)
    names = [c.get("name") if isinstance(c, dict) else str(c) for c in answer.get("columns", [])]
    result = Table(*names)
    for row in answer.get("rows", []):
        cells = [row.get(n) for n in names] if isinstance(row, dict) else row
        result.add_row(*(format_cell(v) for v in cells))
    out.print(result)
    rows = len(answer.get("rows", []))
    out.print(f"[dim]{rows} row{'s' if rows != 1 else ''}"
              f"{' (truncated: raise --limit)' if answer.get('truncated') else ''}[/]")


# ----------------------------------------------------------------------------- serve

@app.command()
def serve(
    host: Annotated[Optional[str], typer.Option(help="Bind address (default 127.0.0.1).",
                                                show_default=False)] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default 8321).", show_default=False)] = None,
    home: Annotated[Optional[str], typer.Option(help="Catalog directory (default .thresher).",
                                                show_default=False)] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
):
    """Run the API server (flags override THRESHER_* environment variables)."""
    import pydantic
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    overrides = {k: v for k, v in {"host": host, "port": port, "home": home}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except pydantic.ValidationError as exc:
        err.print(f"Invalid configuration:\n{exc}", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2)
    if not settings.api_keys and not is_loopback_host(settings.host):
        err.print(f"Refusing to listen on {settings.host} without API keys: set "
                  "THRESHER_API_KEYS=tenant:key[,tenant:key…] or bind to 127.0.0.1.",
                  style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2)
    # One process: the catalog is a single-writer DuckDB file. The graceful-shutdown bound keeps
    # open event streams from holding the server up on SIGTERM.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, workers=1,
                log_level=log_level, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    app(prog_name="thresher")
