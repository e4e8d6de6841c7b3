"""The read-only SQL sandbox behind POST /v1/query.

Each query gets a fresh in-memory DuckDB whose only tables are the caller's manifests, handed in as
Arrow datasets (so DuckDB itself never needs file access). Then external access, extension loading
and Python replacement scans are switched off and the configuration is locked before the user's SQL
runs. Only a single SELECT statement is accepted; functions that reveal the server's configuration
(`duckdb_settings()`, `current_setting()`, `pragma_*`, …) are refused. Time is bounded by
interrupting the connection, memory by DuckDB's limit (spilling into a private, bounded temporary
directory), and the result by `max_rows` and `max_bytes`: it is fetched in batches and refused as
soon as it grows past either bound, so a huge result never sits in Python whole.
"""
from __future__ import annotations

import json
import re
import threading
from typing import Any

import duckdb
import pyarrow.dataset as ds

from storage.duck import connection
from storage.errors import DomainError

# Table functions, views and functions that would show server paths or settings.
HIDDEN = re.compile(r"^(duckdb_|pragma_|sqlite_)|^(current_setting|getenv|which_secret|pragma)$", re.I)
FETCH_ROWS = 2048


class QueryError(DomainError):
    """The query was refused or failed because of what it asked for (a 4xx, never a 5xx)."""

    def __init__(self, code: str, message: str, details: dict | None = None):
        super().__init__(code, message, {"field": "sql", **(details or {})})


def _names(node: Any) -> set[str]:
    """Every function and table name in a parsed statement (DuckDB's JSON form of its AST)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("function_name", "table_name") and isinstance(value, str):
                found.add(value)
            else:
                found |= _names(value)
    elif isinstance(node, list):
        for value in node:
            found |= _names(value)
    return found


def check_sql(sql: str) -> None:
    """Refuse anything but one SELECT, and SELECTs that read the server's configuration."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError("invalid_sql", f"SQL does not parse: {e}") from None
    if len(statements) != 1:
        raise QueryError("invalid_sql", f"send exactly one statement, got {len(statements)}")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise QueryError("forbidden_statement",
                         f"only SELECT queries are allowed, not {statements[0].type.name}")
    con = duckdb.connect()
    try:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
    finally:
        con.close()
    hidden = sorted(n for n in _names(tree) if HIDDEN.search(n))
    if hidden:
        raise QueryError("forbidden", f"{hidden[0]} is not available in the query sandbox: it shows "
                         "the server's configuration")


def value_size(v: Any) -> int:
    """About how many bytes a value takes in the JSON answer."""
    if isinstance(v, (str, bytes, bytearray)):
        return len(v) + 2
    if isinstance(v, (list, tuple)):
        return sum(value_size(x) + 1 for x in v) + 2
    if isinstance(v, dict):
        return sum(value_size(k) + value_size(x) + 2 for k, x in v.items()) + 2
    return 8


def run_query(sql: str, tables: dict[str, ds.Dataset], *, limit: int = 1000,
              timeout_s: float = 30.0, memory_limit: str = "1GB", threads: int = 2,
              max_bytes: int = 32 << 20, temp_root: str | None = None,
              max_temp_size: str = "1GB") -> dict:
    """Run one SELECT over `tables`; up to `limit` rows come back (`truncated` says there were
    more). A result over `max_bytes` (its JSON size, about) raises QueryError result_too_large."""
    check_sql(sql)
    try:
        with connection(temp_root, max_temp_size, threads=threads, memory_limit=memory_limit) as con:
            for name, dataset in tables.items():
                con.register(name, dataset)
            for setting in ("enable_external_access=false", "autoload_known_extensions=false",
                            "autoinstall_known_extensions=false", "python_enable_replacements=false",
                            "lock_configuration=true"):
                con.execute(f"SET {setting}")
            timer = threading.Timer(timeout_s, con.interrupt)
            timer.start()
            try:
                cur = con.execute(f"SELECT * FROM ({sql.strip().rstrip(';')}) LIMIT {int(limit) + 1}")
                columns = [{"name": d[0], "type": str(d[1])} for d in cur.description]
                rows, size = [], 0
                while batch := cur.fetchmany(FETCH_ROWS):
                    size += sum(value_size(v) + 1 for row in batch for v in row)
                    if size > max_bytes:
                        raise QueryError("result_too_large", f"the result is larger than the limit of "
                                         f"{max_bytes} bytes after {len(rows)} rows: select fewer or "
                                         "smaller columns, aggregate, or lower `limit`",
                                         {"limit_bytes": max_bytes, "rows_before_limit": len(rows)})
                    rows += batch
            finally:
                timer.cancel()
    except duckdb.InterruptException:
        raise QueryError("query_timeout", f"query ran longer than {timeout_s:g} s") from None
    except duckdb.PermissionException as e:
        raise QueryError("forbidden", f"not allowed in the query sandbox: {_redact(e, temp_root)}") from None
    except duckdb.OutOfMemoryException as e:
        raise QueryError("query_too_large", "query exceeded the memory limit "
                         f"({memory_limit}, spilling up to {max_temp_size}): {_redact(e, temp_root)}") from None
    except duckdb.Error as e:
        raise QueryError("invalid_sql", _redact(e, temp_root)) from None
    truncated = len(rows) > limit
    return {"columns": columns, "rows": [list(r) for r in rows[:limit]], "truncated": truncated}


def _redact(e: Exception, temp_root: str | None) -> str:
    """An error message without the server's temporary directory in it."""
    text = str(e)
    return text.replace(temp_root, "<temp>") if temp_root else text
