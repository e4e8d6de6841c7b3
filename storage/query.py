"""The read-only SQL sandbox behind POST /v1/query.

A query never runs in the calling (service) process: each one runs in a child process forked
from a small server process (multiprocessing's forkserver), so whatever DuckDB materializes for
it (a vector of 2,048 rows of 100 MB strings is 200 GB) costs the child, never the service. The
caller watches the child: past `process_memory` (its resident size) or `timeout_s` it is killed,
and only the answer's JSON, at most `max_bytes` of it, comes back through a pipe. The service
never parses the user's SQL either.

In the child, a fresh in-memory DuckDB gets the caller's manifests as Arrow datasets (so DuckDB
itself never needs file access), then external access, extension loading and Python replacement
scans are switched off and the configuration is locked. Only a single SELECT is accepted, and
what it may read is an allow-list: the tables handed in, the query's own WITH names and a few
generating table functions (`range`, `unnest`, …), so no catalog view (`pg_settings`,
`information_schema.*`, `duckdb_*`), `query()`/`query_table()` or file reader can be named;
scalar functions that show settings (`current_setting()`, `getvariable()`, …) are refused. The
result is streamed as Arrow batches and converted to JSON as it comes, refused (413) as soon as it
passes `max_bytes`. Error messages leave out the server's paths (its home, temporary directory,
store root, the home directory of the user it runs as).
"""
from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import threading
import time
from typing import Any, Iterable

import duckdb
import psutil
import pyarrow as pa
import pyarrow.dataset as ds

from storage.duck import connect, spill_dir
from storage.errors import DomainError, redact

# What a query may read besides the caller's tables and its own WITH names.
TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "json_each", "json_tree"})
# Scalar functions that show the server's settings or environment.
HIDDEN = re.compile(r"^(duckdb_|pragma_|sqlite_)|^(current_setting|getenv|getvariable|which_secret|pragma|"
                    r"platform|user_agent)$", re.I)
SANDBOX = ("enable_external_access=false", "autoload_known_extensions=false",
           "autoinstall_known_extensions=false", "python_enable_replacements=false", "lock_configuration=true")
# Settings whose values are server paths (kept out of error messages).
PATH_SETTINGS = ("home_directory", "extension_directory", "secret_directory", "temp_directory")
MAX_EXPRESSION_DEPTH = 1000   # DuckDB's own default (max_expression_depth)
FETCH_ROWS = 256              # rows per Arrow batch the child converts at a time
SEND_BYTES = 1 << 20          # the child sends rows in messages of about this size
POLL_S = 0.02                 # how often the caller looks at the child's memory
START_S = 5.0                 # the child's start, on top of the query's time limit
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}

_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload([__name__])


class QueryError(DomainError):
    """The query was refused or failed because of what it asked for (a 4xx, never a 5xx)."""

    def __init__(self, code: str, message: str, details: dict | None = None):
        super().__init__(code, message, {"field": "sql", **(details or {})})


def parse_size(text: str) -> int:
    """Bytes in a DuckDB-style size ("2GB", "512MiB", "1000")."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in UNITS:
        raise ValueError(f"{text!r} is not a size like 2GB or 512MiB")
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


def too_deep() -> QueryError:
    return QueryError("validation_error", f"the query nests too deeply: at most {MAX_EXPRESSION_DEPTH} levels "
                      "of nested expressions or subqueries; write long sums and chains with fewer levels "
                      "(for example list_sum([...]) or a table of values)",
                      {"max_depth": MAX_EXPRESSION_DEPTH})


# -- the caller's side ----------------------------------------------------------------------------

def run_query(sql: str, tables: dict[str, ds.Dataset], *, limit: int = 1000,
              timeout_s: float = 30.0, memory_limit: str = "1GB", process_memory: str = "2GB",
              threads: int = 2, max_bytes: int = 32 << 20, temp_root: str | None = None,
              max_temp_size: str = "1GB", server_paths: Iterable[str] = ()) -> bytes:
    """Run one SELECT over `tables` in a child process; returns the JSON answer
    `{"columns", "rows", "truncated"}` with up to `limit` rows (`truncated` says there were more).
    A result over `max_bytes` (its JSON size) raises QueryError result_too_large, a child over
    `process_memory` query_too_large, one over `timeout_s` query_timeout."""
    cap = parse_size(process_memory)
    with spill_dir(temp_root) as private:
        paths = [*server_paths, private, os.path.dirname(private), tempfile.gettempdir(), os.path.expanduser("~")]
        job = dict(sql=sql, tables=tables, limit=int(limit), timeout_s=timeout_s, memory_limit=memory_limit,
                   threads=threads, max_bytes=max_bytes, temp_dir=private, max_temp_size=max_temp_size,
                   paths=paths)
        receive, send = _CTX.Pipe(duplex=False)
        child = _CTX.Process(target=_child, args=(send, job), name="thresher-query", daemon=True)
        child.start()
        send.close()
        try:
            return _collect(receive, child, cap, timeout_s, max_bytes, memory_limit, process_memory)
        finally:
            if child.is_alive():
                child.kill()
            child.join(10)
            receive.close()


def _collect(receive, child, cap: int, timeout_s: float, max_bytes: int, memory_limit: str,
             process_memory: str) -> bytes:
    """The child's answer, read while watching its memory and time."""
    deadline = time.monotonic() + timeout_s + START_S
    proc = psutil.Process(child.pid)
    head, rows, size = b"", [], 0
    while True:
        if receive.poll(POLL_S):
            try:
                message = receive.recv_bytes(2 * SEND_BYTES + max_bytes)
            except EOFError:
                child.join(10)
                raise _died(child.exitcode, timeout_s, process_memory) from None
            tag, body = message[:1], message[1:]
            if tag == b"C":
                head = body
            elif tag == b"R":
                size += len(body)
                if size > max_bytes + SEND_BYTES:  # the child bounds this already: a second guard
                    raise _too_large(max_bytes, None)
                rows.append(body)
            elif tag == b"E":
                error = json.loads(body)
                raise QueryError(error["code"], error["message"], error["details"])
            else:  # b"D": done
                return b'{"columns":%s,"rows":[%s],"truncated":%s}' % (head, b",".join(rows), body)
            continue
        try:
            rss = proc.memory_info().rss
        except psutil.Error:
            rss = 0  # it has exited: the pipe says how
        if rss > cap:
            child.kill()
            raise QueryError("query_too_large", f"the query needed more than {process_memory} of memory "
                             f"(its process's limit; DuckDB's own share is {memory_limit}): select fewer or "
                             "smaller values, or aggregate", {"limit": process_memory})
        if time.monotonic() > deadline:
            child.kill()
            raise QueryError("query_timeout", f"query ran longer than {timeout_s:g} s")


def _died(exitcode: int | None, timeout_s: float, process_memory: str) -> QueryError:
    if exitcode == -signal.SIGALRM:
        return QueryError("query_timeout", f"query ran longer than {timeout_s:g} s")
    if exitcode == -signal.SIGKILL:  # the kernel's OOM killer: nobody else kills it
        return QueryError("query_too_large", f"the query's process was killed for memory (limit {process_memory})",
                          {"limit": process_memory})
    return QueryError("query_failed", f"the query's process stopped (exit code {exitcode}) before answering; "
                      "it may nest too deeply or ask for too much")


def _too_large(max_bytes: int, rows: int | None) -> QueryError:
    after = f" after {rows} rows" if rows is not None else ""
    return QueryError("result_too_large", f"the result is larger than the limit of {max_bytes} bytes{after}: "
                      "select fewer or smaller columns, aggregate, or lower `limit`",
                      {"limit_bytes": max_bytes, "rows_before_limit": rows})


# -- the child's side -----------------------------------------------------------------------------

def _child(out, job: dict) -> None:
    # A backstop should the caller vanish: the child never outlives its time limit by much.
    signal.alarm(int(job["timeout_s"] + 2 * START_S) + 1)
    # The parsed statement is nested JSON, as deep as the SQL: json.loads recurses.
    sys.setrecursionlimit(10 * MAX_EXPRESSION_DEPTH + 1000)
    paths = job["paths"]
    try:
        _answer(out, job, paths)
    except QueryError as e:
        _send_error(out, e, paths)
    except RecursionError:
        _send_error(out, too_deep(), paths)
    except duckdb.Error as e:
        _send_error(out, _classify(e, job), paths)
    except pa.ArrowException as e:  # converting the result (nested 500 lists deep, …)
        _send_error(out, too_deep() if "ecursion" in str(e) else QueryError("invalid_sql", str(e)), paths)
    except MemoryError:
        _send_error(out, QueryError("query_too_large", "the query ran out of memory converting its result"), paths)
    except Exception as e:  # noqa: BLE001 - said to the caller, not printed on the service's stderr
        _send_error(out, QueryError("query_failed", f"the query failed: {type(e).__name__}: {e}"), paths)
    finally:
        out.close()


def _send_error(out, e: QueryError, paths: list[str]) -> None:
    details = {k: redact(v, paths) if isinstance(v, str) else v for k, v in e.details.items()}
    out.send_bytes(b"E" + json.dumps({"code": e.code, "message": redact(e.message, paths),
                                      "details": details}).encode())


def _classify(e: duckdb.Error, job: dict) -> QueryError:
    text = str(e)
    if isinstance(e, duckdb.InterruptException):
        return QueryError("query_timeout", f"query ran longer than {job['timeout_s']:g} s")
    if "expression depth" in text:
        return too_deep()
    if isinstance(e, duckdb.PermissionException):
        return QueryError("forbidden", f"not allowed in the query sandbox: {text}")
    if isinstance(e, duckdb.OutOfMemoryException):
        return QueryError("query_too_large", f"query exceeded the memory limit ({job['memory_limit']}, "
                          f"spilling up to {job['max_temp_size']}): {text}")
    return QueryError("invalid_sql", text)


def _answer(out, job: dict, paths: list[str]) -> None:
    sql, limit, max_bytes = job["sql"].strip().rstrip(";"), job["limit"], job["max_bytes"]
    con = connect(job["temp_dir"], job["max_temp_size"], threads=job["threads"], memory_limit=job["memory_limit"])
    placeholders = ", ".join("?" for _ in PATH_SETTINGS)
    paths += [v for (v,) in con.execute(f"SELECT value FROM duckdb_settings() WHERE name IN ({placeholders})",
                                        list(PATH_SETTINGS)).fetchall() if v]
    _sandbox(con, job["tables"])
    check_statement(sql)
    # The newlines keep a trailing `--` comment from swallowing the wrapper's parenthesis; the
    # allow-list is checked on exactly the text that runs.
    wrapped = f"SELECT * FROM (\n{sql}\n) LIMIT {limit + 1}"
    check_reads(con, wrapped, set(job["tables"]))
    timer = threading.Timer(job["timeout_s"], con.interrupt)
    timer.start()
    try:
        rel = con.sql(wrapped)
        columns = [{"name": n, "type": str(t)} for n, t in zip(rel.columns, rel.types)]
        out.send_bytes(b"C" + json.dumps(columns).encode())
        count, size, pending, truncated = 0, 0, [], False
        for batch in rel.to_arrow_reader(FETCH_ROWS):
            # JSON takes at least a quarter of Arrow's bytes (8-byte numbers as "0,"): a batch that
            # is over even so is refused before it is converted.
            if size + batch.nbytes // 4 > max_bytes:
                raise _too_large(max_bytes, count)
            for row in zip(*(column.to_pylist(maps_as_pydicts="lossy") for column in batch.columns)):
                if count == limit:
                    truncated = True
                    break
                text = _json(list(row))
                size += len(text) + 1
                if size > max_bytes:
                    raise _too_large(max_bytes, count)
                pending.append(text)
                count += 1
            if sum(map(len, pending)) >= SEND_BYTES or truncated:
                out.send_bytes(b"R" + b",".join(pending))
                pending = []
            if truncated:
                break
        if pending:
            out.send_bytes(b"R" + b",".join(pending))
        out.send_bytes(b"D" + (b"true" if truncated else b"false"))
    finally:
        timer.cancel()


def _sandbox(con: duckdb.DuckDBPyConnection, tables: dict[str, ds.Dataset]) -> None:
    """Hand the tables to a fresh connection, then shut its access to anything else and lock it."""
    for name, dataset in tables.items():
        con.register(name, dataset)
    for setting in SANDBOX:
        con.execute(f"SET {setting}")


def predicate_sql(where: str, columns: str = "shard, row") -> str:
    """The rows of table `m` where a tenant's predicate holds. The newlines keep a trailing `--`
    comment from swallowing the parenthesis; whatever the predicate holds, the whole statement is
    what the sandbox checks."""
    return f"SELECT {columns} FROM m WHERE (\n{where}\n)"


def matching_rows(where: str, table: ds.Dataset, *, timeout_s: float = 300.0, memory_limit: str = "1GB",
                  temp_root: str | None = None, max_temp_size: str = "1GB") -> pa.Table:
    """`shard, row` of the rows of `table` (named `m`) where the predicate `where` holds, under the
    sandbox's settings and allow-list, in this process: for a job's Ray worker (the service runs a
    tenant's SQL only through run_query). Raises QueryError as run_query does."""
    sql = predicate_sql(where)
    with spill_dir(temp_root) as private:
        con = connect(private, max_temp_size, threads=1, memory_limit=memory_limit)
        timer = threading.Timer(timeout_s, con.interrupt)
        try:
            _sandbox(con, {"m": table})
            check_statement(sql)
            check_reads(con, sql, {"m"})
            timer.start()
            return con.sql(sql).fetch_arrow_table()
        except RecursionError:
            raise too_deep() from None
        except duckdb.Error as e:
            raise _classify(e, {"timeout_s": timeout_s, "memory_limit": memory_limit,
                                "max_temp_size": max_temp_size}) from None
        finally:
            timer.cancel()
            con.close()


def check_statement(sql: str) -> None:
    """Refuse anything but one SELECT."""
    statements = duckdb.extract_statements(sql)
    if len(statements) != 1:
        raise QueryError("invalid_sql", f"send exactly one statement, got {len(statements)}")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise QueryError("forbidden_statement", f"only SELECT queries are allowed, not {statements[0].type.name}")


def check_reads(con: duckdb.DuckDBPyConnection, sql: str, tables: set[str]) -> None:
    """Refuse a SELECT that reads anything but `tables`, its own WITH names and TABLE_FUNCTIONS,
    or calls a HIDDEN function (checked on DuckDB's parse tree, in JSON)."""
    tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])
    if tree.get("error"):
        message = tree.get("error_message", "")
        if "expression depth" in message:
            raise too_deep()
        # A form the serializer does not know (PIVOT in a subquery, …) cannot be checked.
        raise QueryError("invalid_sql", f"this query cannot be checked by the sandbox: {message}")
    # Walked with a stack, not recursion: the tree is as deep as the SQL nests. Each node carries
    # the names in scope there: a WITH name is visible only inside the query that defines it.
    stack: list[tuple[Any, frozenset[str]]] = [(tree, frozenset(t.lower() for t in tables))]
    while stack:
        node, scope = stack.pop()
        if isinstance(node, list):
            stack += [(value, scope) for value in node]
            continue
        if not isinstance(node, dict):
            continue
        ctes = node.get("cte_map")
        if isinstance(ctes, dict):
            scope = scope | {str(entry.get("key", "")).lower() for entry in ctes.get("map", [])}
        _check_node(node, scope, tables)
        stack += [(value, scope) for value in node.values() if isinstance(value, (dict, list))]


def _check_node(node: dict, scope: frozenset[str], tables: set[str]) -> None:
    kind = node.get("type")
    readable = ", ".join(sorted(tables)) or "none"
    if kind == "BASE_TABLE" or (kind == "SHOW_REF" and node.get("table_name")):
        name = str(node.get("table_name", ""))
        qualified = node.get("schema_name") not in ("", "main", None) or node.get("catalog_name") not in ("", None)
        if qualified or name.lower() not in scope:
            shown = ".".join(p for p in (node.get("catalog_name"), node.get("schema_name"), name) if p)
            raise QueryError("forbidden", f"{shown} is not readable in the query sandbox: a query reads only the "
                             f"tables named in `tables` ({readable}) and its own WITH names")
    elif kind == "TABLE_FUNCTION":
        function = node.get("function") or {}
        name = str(function.get("function_name", "?"))
        if function.get("class") != "FUNCTION" or name.lower() not in TABLE_FUNCTIONS:
            raise QueryError("forbidden", f"{name}() is not available in the query sandbox: the table functions "
                             f"are {', '.join(sorted(TABLE_FUNCTIONS))}; tables are those named in `tables` "
                             f"({readable})")
    name = node.get("function_name")
    if isinstance(name, str) and HIDDEN.search(name):
        raise QueryError("forbidden", f"{name} is not available in the query sandbox: it shows the server's "
                         "configuration")


def _json(values: list) -> bytes:
    try:
        text = json.dumps(values, default=_plain, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except ValueError:  # NaN or ±infinity: JSON has no such numbers, they answer null
        text = json.dumps(_finite(values), default=_plain, allow_nan=False, ensure_ascii=False,
                          separators=(",", ":"))
    return text.encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _plain(value: Any) -> Any:
    """A JSON value for what json does not know (as FastAPI's encoder writes them)."""
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return int(value) if value.as_tuple().exponent >= 0 else float(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)  # UUID, …
