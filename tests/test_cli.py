"""The CLI's parsing, rendering and error handling, mostly without a running service; the job kinds
and their spec fields come from one (the `live_service` fixture)."""
import io
import json
import re
import socket

import httpx
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from service import cli
from thresher.client import ThresherError, _sse_data

runner = CliRunner()

EXPECTED_COMMANDS = {
    ("serve",), ("compare",),
    ("corpora", "upload"), ("corpora", "list"), ("corpora", "show"), ("corpora", "sample"),
    ("corpora", "download"), ("corpora", "delete"),
    ("jobs", "submit"),     # KIND: one command per kind the service lists
    ("jobs", "watch"), ("jobs", "list"), ("jobs", "show"), ("jobs", "cancel"),
    ("manifests", "list"), ("manifests", "show"), ("manifests", "download"), ("manifests", "query"),
    ("manifests", "export"), ("manifests", "rejections"),
    ("models", "list"), ("models", "show"), ("models", "register"),
    ("models", "import-gguf"),
    ("projections", "predict"), ("projections", "plot"),
    ("curricula", "show"), ("curricula", "epoch"), ("curricula", "losses"),
}


def cli_at(live_service, *args):
    return runner.invoke(cli.app, ["--url", live_service.url, "--key", live_service.key, *args])


def test_the_cli_submits_every_public_kind_and_only_those(live_service):
    """The kinds come from the service: `jobs submit --help` lists each public kind, and each one
    reaches the service as a job of that kind (its spec is refused there, naming a field)."""
    from service.schemas import PUBLIC_KINDS
    listed = cli_at(live_service, "jobs", "submit", "--help")
    assert listed.exit_code == 0, listed.output
    assert set(re.findall(r"│ ([a-z_]+) ", listed.output)) == PUBLIC_KINDS
    for kind in sorted(PUBLIC_KINDS):
        result = cli_at(live_service, "jobs", "submit", kind, "--spec", "{}")
        assert result.exit_code == 1, (kind, result.output)
        assert result.stderr.startswith(("Error 422 (validation_error): spec.", "Error 422 (validation_error): spec:")), (
            kind, result.stderr)
    for internal in ("ingest", "export"):
        result = cli_at(live_service, "jobs", "submit", internal, "--spec", "{}")
        assert result.exit_code == 2 and f"unknown job kind {internal!r}" in result.output


def test_an_unknown_kind_is_a_usage_error_with_a_suggestion(live_service):
    for args in (["dedpu"], ["dedpu", "--help"], ["dedpu", "--spec", '{"pool": "x"}']):
        result = cli_at(live_service, "jobs", "submit", *args)
        text = re.sub(r"[\s│]+", " ", result.output)
        assert result.exit_code == 2, (args, result.output)
        assert "unknown job kind 'dedpu'; did you mean 'dedup'?" in text and "quality" in text, text


def test_submit_help_lists_the_kinds_spec_fields_with_types_and_defaults(live_service):
    result = cli_at(live_service, "jobs", "submit", "color_filter", "--help")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "pool: str (required)" in out and "select: Select (required)" in out
    assert '  mode: "global"|"per_shard" (default "global")' in out
    assert "pool_fraction: float (default 0.5)" in out     # nested: prior.train.pool_fraction
    assert "fraction: float | null (default null)" in out
    dedup = cli_at(live_service, "jobs", "submit", "dedup", "--help").output
    assert 'keep: "first"|"longest" | KeepByScore (default "first")' in dedup
    assert "    manifest: str (required) — a manifest id (man_…)" in dedup
    assert "Submit a dedup job: exact and MinHash-LSH deduplication" in re.sub(r"[\s│]+", " ", dedup)


def test_submit_help_without_the_service_says_where_the_fields_come_from():
    result = runner.invoke(cli.app, ["--url", closed_port_url(), "jobs", "submit", "dedup", "--help"])
    assert result.exit_code == 0 and "--spec" in result.output
    assert "The spec fields of dedup come from the service, which did not answer: cannot reach" in result.output


def leaf_commands(command, path: tuple = ()) -> set[tuple]:
    if getattr(command, "commands", None):  # a group (typer ships its own copy of click's classes)
        return {leaf for name, sub in command.commands.items()
                for leaf in leaf_commands(sub, (*path, name))}
    return {path}


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the socket is closed


def test_command_tree_is_the_documented_one():
    assert leaf_commands(typer.main.get_command(cli.app)) == EXPECTED_COMMANDS


@pytest.mark.parametrize("path", sorted(EXPECTED_COMMANDS), ids=" ".join)
def test_every_command_has_help(path):
    result = runner.invoke(cli.app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert " ".join(path) in result.output
    assert "Usage" in result.output


def test_global_options_come_from_the_environment():
    result = runner.invoke(cli.app, ["--help"])
    assert "THRESHER_URL" in result.output and "THRESHER_KEY" in result.output


def test_spec_inline_json_and_at_file(tmp_path):
    assert cli.parse_spec('{"pool": "cor_1", "select": {"fraction": 0.1}}') == {
        "pool": "cor_1", "select": {"fraction": 0.1}}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"pool": "cor_2", "seed": 7}))
    assert cli.parse_spec(f"@{spec_file}") == {"pool": "cor_2", "seed": 7}


@pytest.mark.parametrize("value, fragment", [
    ('{"pool": }', "line 1, column 10"),
    ("[1, 2]", "must be a JSON object, got list"),
    ("@/nonexistent/spec.json", "cannot read spec file"),
])
def test_bad_specs_are_rejected_with_the_reason(value, fragment):
    with pytest.raises(typer.BadParameter, match=fragment.replace("[", r"\[")):
        cli.parse_spec(value)


def test_bad_spec_is_a_usage_error_before_any_request():
    # Nothing listens at the URL: reaching the network would exit 1, a usage error exits 2.
    result = runner.invoke(cli.app, ["--url", closed_port_url(), "jobs", "submit", "dsir",
                                     "--spec", "{not json"])
    assert result.exit_code == 2
    assert "--spec" in result.output and "not valid JSON" in result.output


def test_unreachable_server_is_reported_and_exits_1():
    url = closed_port_url()
    result = runner.invoke(cli.app, ["--url", url, "corpora", "list"])
    assert result.exit_code == 1
    assert f"Cannot reach the Thresher API at {url}" in result.stderr


def test_api_error_envelope_is_decoded_and_rendered():
    response = httpx.Response(422, json={"error": {
        "code": "invalid_spec", "message": "select.fraction must be in (0, 1]",
        "details": {"path": "spec.select.fraction", "allowed": [0, 1]}}})
    error = ThresherError.from_response(response)
    assert (error.status, error.code) == (422, "invalid_spec")
    assert cli.format_api_error(error) == (
        "Error 422 (invalid_spec): select.fraction must be in (0, 1]\n"
        "  path: spec.select.fraction\n"
        "  allowed: [0, 1]")


def test_non_envelope_error_keeps_the_status_and_text():
    response = httpx.Response(502, text="<html>Bad gateway</html>")
    error = ThresherError.from_response(response)
    assert cli.format_api_error(error) == "Error 502 (http_502): <html>Bad gateway</html>"
    assert cli.format_api_error(ThresherError.from_response(httpx.Response(503))) == (
        "Error 503 (http_503): Service Unavailable")


def test_commands_turn_api_errors_into_a_message_and_exit_1():
    probe = typer.Typer()

    @probe.command()
    @cli.reports_api_errors
    def fetch(corpus_id: str):
        raise ThresherError("not_found", f"no corpus {corpus_id}", {"id": corpus_id}, 404)

    result = runner.invoke(probe, ["cor_missing"])
    assert result.exit_code == 1
    assert "Error 404 (not_found): no corpus cor_missing" in result.stderr
    assert "id: cor_missing" in result.stderr


def test_sse_parsing_follows_the_event_stream_rules():
    lines = [": keep-alive", "", "event: job", 'data: {"state":', 'data: "running"}', "",
             "data:no-space", "", "data:  two spaces", "", 'data: {"cut short']
    assert list(_sse_data(lines)) == ['{"state":\n"running"}', "no-space", " two spaces"]


def test_table_bindings():
    assert cli.parse_table_bindings(["m=man_1", "prior=man_2"]) == {"m": "man_1", "prior": "man_2"}
    for bad in ("man_1", "1m=man_1", "m=", "a b=man_1"):
        with pytest.raises(typer.BadParameter):
            cli.parse_table_bindings([bad])


@pytest.mark.parametrize("name, expected", [
    ("pool.jsonl", "jsonl"), ("pool.JSONL.gz", "jsonl"), ("pool.ndjson.zst", "jsonl"),
    ("data.v2.parquet", "parquet"), ("rows.csv.gz", "csv")])
def test_format_is_inferred_past_compression(name, expected, tmp_path):
    assert cli.infer_format(tmp_path / name) == expected


def test_unknown_suffix_asks_for_format(tmp_path):
    with pytest.raises(typer.BadParameter, match="--format"):
        cli.infer_format(tmp_path / "pool.txt.gz")


@pytest.mark.parametrize("name, expected", [
    ("sel.csv", ("csv", None)), ("sel.jsonl.gz", ("jsonl", "gzip")), ("pool.ndjson.zst", ("jsonl", "zstd")),
    ("m.parquet", ("parquet", None)), ("m", ("parquet", None)), ("m.gz", ("parquet", "gzip"))])
def test_download_format_comes_from_the_output_name(name, expected, tmp_path):
    assert cli.download_format_of(tmp_path / name, None) == expected


@pytest.mark.parametrize("command", [["corpora", "download", "cor_x"], ["manifests", "download", "man_x"]])
@pytest.mark.parametrize("name, fmt, fragment", [
    ("x.csv", "jsonl", "contradicts the file name 'x.csv'"), ("x.txt", None, "cannot tell the format of 'x.txt'")])
def test_download_refuses_a_format_the_name_contradicts(command, name, fmt, fragment, tmp_path):
    args = ["--url", closed_port_url(), *command, "-o", str(tmp_path / name), *(["--format", fmt] if fmt else [])]
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2 and fragment in re.sub(r"[\s│]+", " ", result.output), result.output  # no request
    assert not (tmp_path / name).exists()


def test_loopback_detection():
    assert all(map(cli.is_loopback_host, ["127.0.0.1", "127.8.0.1", "::1", "localhost"]))
    assert not any(map(cli.is_loopback_host, ["0.0.0.0", "::", "10.0.0.5", "api.example.com"]))


def test_progress_formatting():
    assert cli.format_count(1200, 3000, "docs") == "1,200/3,000 docs"
    assert cli.format_count(5, None, None) == "5"
    assert cli.format_rate(850.4, "docs") == "850 docs/s"
    assert cli.format_rate(2.5, None) == "2.50 items/s"
    assert cli.format_rate(None, "docs") == ""
    assert [cli.format_duration(s) for s in (None, 4.6, 65, 3725)] == ["", "5s", "1m05s", "1h02m"]


def job_at(done: int, state: str = "running") -> dict:
    return {"id": "job_1", "state": state, "progress": {
        "stage": "score", "done": done, "total": 8, "unit": "shards", "rate_per_s": 4.0,
        "eta_s": (8 - done) / 4}}


def test_job_view_on_a_terminal_draws_a_live_bar():
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with cli.JobProgressView(console) as view:
        for done in range(9):
            view.update(job_at(done, "succeeded" if done == 8 else "running"))
    # Frames are redrawn on a timer, so only the final one is certain.
    final_frame = console.file.getvalue().rsplit("\r", 1)[-1]
    assert "succeeded" in final_frame and "score" in final_frame
    assert "8/8 shards" in final_frame and "4.00 shards/s" in final_frame


def test_job_view_in_a_log_prints_a_line_per_quarter_and_state_change():
    console = Console(file=io.StringIO(), force_terminal=False, width=120)
    with cli.JobProgressView(console) as view:
        for done in range(9):
            view.update(job_at(done))
        view.update(job_at(8, "succeeded"))
    assert console.file.getvalue().splitlines() == [
        "running  score  0/8 shards  4.00 shards/s  ETA 2s",
        "running  score  2/8 shards  4.00 shards/s  ETA 2s",
        "running  score  4/8 shards  4.00 shards/s  ETA 1s",
        "running  score  6/8 shards  4.00 shards/s  ETA 0s",
        "running  score  8/8 shards  4.00 shards/s  ETA 0s",
        "succeeded  score  8/8 shards  4.00 shards/s  ETA 0s",
    ]


def test_serve_refuses_a_public_address_without_api_keys(monkeypatch):
    monkeypatch.delenv("THRESHER_API_KEYS", raising=False)
    result = runner.invoke(cli.app, ["serve", "--host", "0.0.0.0", "--port", "1"])
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0: no API keys" in result.stderr


def test_serve_reports_bad_configuration(monkeypatch):
    monkeypatch.setenv("THRESHER_API_KEYS", "no-colon")
    result = runner.invoke(cli.app, ["serve"])
    assert result.exit_code == 2
    assert "Invalid configuration" in result.stderr and "tenant:key" in result.stderr


def test_watch_shows_the_stages_to_come_the_whole_job_eta_and_why_it_waits():
    console = Console(file=io.StringIO(), force_terminal=False, width=200)
    queued = {"id": "job_2", "state": "queued", "progress": {
        "waiting": "waiting for a job slot: 2 jobs running (job_a, job_b; THRESHER_MAX_CONCURRENT_JOBS=2)"}}
    plan = [{"stage": "train_prior", "state": "done", "eta_s": 0},
            {"stage": "finetune", "state": "running", "up_to": 3000, "eta_s": 20},
            {"stage": "score", "state": "pending", "eta_s": None}, {"stage": "select", "state": "pending", "eta_s": 1}]
    running = {"id": "job_2", "state": "running", "progress": {
        "stage": "finetune", "done": 300, "total": 3000, "unit": "tokens", "rate_per_s": 100.0, "eta_s": None,
        "plan": plan}}
    with cli.JobProgressView(console) as view:
        view.update(queued)
        view.update(running)
        view.update({**running, "progress": {**running["progress"], "eta_s": 95.0}})
    assert console.file.getvalue().splitlines() == [
        "queued  waiting for a job slot: 2 jobs running (job_a, job_b; THRESHER_MAX_CONCURRENT_JOBS=2)",
        "running  finetune  300/3,000 tokens (a ceiling: may stop early)  100 tokens/s  stage ETA 20s, job ETA "
        "unknown  then score, select",
    ]
