"""The read-only SQL sandbox behind POST /v1/query.

Each query gets a fresh in-memory DuckDB whose only tables are the caller's manifests, handed in as
Arrow datasets (so DuckDB itself never needs file access). Then external access, extension loading
and Python replacement scans are switched off and the configuration is locked before the user's SQL
runs. Only a single SELECT statement is accepted; time is bounded by interrupting the connection.
"""
from __future__ import annotations

import threading

import duckdb

from storage.errors import DomainError
import pyarrow.dataset as ds


class QueryError(DomainError):
    """The query was refused or failed because of what it asked for (a 4xx, never a 5xx)."""

    def __init__(self, code: str, message: str):
        super().__init__(code, message, {"field": "sql"})


def run_query(sql: str, tables: dict[str, ds.Dataset], *, limit: int = 1000,
              timeout_s: float = 30.0, memory_limit: str = "1GB", threads: int = 2) -> dict:
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError("invalid_sql", f"SQL does not parse: {e}") from None
    if len(statements) != 1:
        raise QueryError("invalid_sql", f"send exactly one statement, got {len(statements)}")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise QueryError("forbidden_statement",
                         f"only SELECT queries are allowed, not {statements[0].type.name}")

    con = duckdb.connect(config={"threads": threads, "memory_limit": memory_limit})
    try:
        for name, dataset in tables.items():
            con.register(name, dataset)
        for setting in ("enable_external_access=false", "autoload_known_extensions=false",
                        "autoinstall_known_extensions=false", "python_enable_replacements=false",
                        "lock_configuration=true"):
            con.execute(f"SET {setting}")
        timer = threading.Timer(timeout_s, con.interrupt)
        timer.start()
        try:
            rel = con.sql(f"SELECT * FROM ({sql.strip().rstrip(';')}) LIMIT {int(limit) + 1}")
            columns = [{"name": n, "type": str(t)} for n, t in zip(rel.columns, rel.types)]
            rows = rel.fetchall()
        finally:
            timer.cancel()
    except duckdb.InterruptException:
        raise QueryError("query_timeout", f"query ran longer than {timeout_s:g} s") from None
    except duckdb.PermissionException as e:
        raise QueryError("forbidden", f"not allowed in the query sandbox: {e}") from None
    except duckdb.OutOfMemoryException as e:
        raise QueryError("query_too_large", f"query exceeded the memory limit: {e}") from None
    except duckdb.Error as e:
        raise QueryError("invalid_sql", str(e)) from None
    finally:
        con.close()
    truncated = len(rows) > limit
    return {"columns": columns, "rows": [list(r) for r in rows[:limit]], "truncated": truncated}
