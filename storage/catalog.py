"""The catalog: corpora, jobs, manifests, models and curriculum runs, in one DuckDB file.

Only one process may write a DuckDB file, so the service process owns the catalog; Ray workers
never touch it (they write Parquet and return small results). All access goes through one
connection guarded by a lock: catalog operations are tiny next to the work they describe.
"""
from __future__ import annotations

import base64
import json
import os
import threading
import uuid
from datetime import datetime, timezone

import duckdb

# table -> {column: type}; columns typed JSON hold dicts/lists and are (de)serialised here.
TABLES: dict[str, dict[str, str]] = {
    "corpora": {
        "id": "VARCHAR PRIMARY KEY", "tenant": "VARCHAR", "name": "VARCHAR", "state": "VARCHAR",
        "num_docs": "BIGINT", "num_bytes": "BIGINT", "num_shards": "INTEGER", "num_empty": "BIGINT",
        "sources": "JSON", "created_at": "VARCHAR", "job_id": "VARCHAR", "error": "JSON",
        "meta": "JSON",
    },
    "jobs": {
        "id": "VARCHAR PRIMARY KEY", "tenant": "VARCHAR", "kind": "VARCHAR", "name": "VARCHAR",
        "state": "VARCHAR", "spec": "JSON", "created_at": "VARCHAR", "started_at": "VARCHAR",
        "finished_at": "VARCHAR", "progress": "JSON", "error": "JSON", "result": "JSON",
        "idempotency_key": "VARCHAR", "request_hash": "VARCHAR", "attempts": "INTEGER",
    },
    "manifests": {
        "id": "VARCHAR PRIMARY KEY", "tenant": "VARCHAR", "job_id": "VARCHAR", "kind": "VARCHAR",
        "num_rows": "BIGINT", "num_selected": "BIGINT", "columns": "JSON", "num_shards": "INTEGER",
        "created_at": "VARCHAR", "meta": "JSON",
    },
    "models": {
        "id": "VARCHAR PRIMARY KEY", "tenant": "VARCHAR", "name": "VARCHAR", "source": "VARCHAR",
        "job_id": "VARCHAR", "created_at": "VARCHAR", "meta": "JSON",
    },
    "curricula": {
        "id": "VARCHAR PRIMARY KEY", "tenant": "VARCHAR", "job_id": "VARCHAR", "method": "VARCHAR",
        "corpus_id": "VARCHAR", "epoch": "INTEGER", "epochs": "INTEGER", "created_at": "VARCHAR",
        "params": "JSON", "stats": "JSON",
    },
}
PREFIX = {"corpora": "cor", "jobs": "job", "manifests": "man", "models": "mdl", "curricula": "cur"}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id(table: str) -> str:
    return f"{PREFIX[table]}_{uuid.uuid4().hex[:20]}"


class NotFound(KeyError):
    pass


class Catalog:
    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.con = duckdb.connect(path)
        self.lock = threading.Lock()
        with self.lock:
            for table, cols in TABLES.items():
                body = ", ".join(f"{c} {t}" for c, t in cols.items())
                self.con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({body})")
            self.con.execute(
                "CREATE UNIQUE INDEX IF NOT EXISTS jobs_idem ON jobs (tenant, idempotency_key)")

    def close(self) -> None:
        with self.lock:
            self.con.close()

    # -- row <-> dict --------------------------------------------------------------------------
    @staticmethod
    def _encode(table: str, rec: dict) -> dict:
        cols = TABLES[table]
        out = {}
        for k, v in rec.items():
            if k not in cols:
                raise KeyError(f"{table} has no column {k}")
            out[k] = json.dumps(v) if cols[k] == "JSON" and v is not None else v
        return out

    @staticmethod
    def _decode(table: str, names: list[str], row: tuple) -> dict:
        cols = TABLES[table]
        return {n: (json.loads(v) if cols[n] == "JSON" and v is not None else v) for n, v in zip(names, row)}

    def _select(self, table: str, where: str, params: list, tail: str = "") -> list[dict]:
        with self.lock:
            cur = self.con.execute(f"SELECT * FROM {table} WHERE {where} {tail}", params)
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
        return [self._decode(table, names, r) for r in rows]

    # -- public API ----------------------------------------------------------------------------
    def insert(self, table: str, rec: dict) -> dict:
        enc = self._encode(table, rec)
        cols = ", ".join(enc)
        marks = ", ".join("?" for _ in enc)
        with self.lock:
            self.con.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", list(enc.values()))
        return rec

    def insert_or_get(self, table: str, rec: dict, key: tuple[str, ...]) -> tuple[dict, bool]:
        """Insert `rec` unless a row with the same values in the `key` columns exists; check and
        insert happen under one lock, so concurrent callers with one key all get the same row.
        Returns (the stored row, whether this call inserted it)."""
        where = " AND ".join(f"{k} = ?" for k in key)
        enc = self._encode(table, rec)
        with self.lock:
            cur = self.con.execute(f"SELECT * FROM {table} WHERE {where}", [enc[k] for k in key])
            row = cur.fetchone()
            if row is not None:
                return self._decode(table, [d[0] for d in cur.description], row), False
            self.con.execute(f"INSERT INTO {table} ({', '.join(enc)}) VALUES ({', '.join('?' for _ in enc)})",
                             list(enc.values()))
        return rec, True

    def update(self, table: str, id_: str, **fields) -> None:
        if not fields:
            return
        enc = self._encode(table, fields)
        sets = ", ".join(f"{k} = ?" for k in enc)
        with self.lock:
            self.con.execute(f"UPDATE {table} SET {sets} WHERE id = ?", [*enc.values(), id_])

    def get(self, table: str, id_: str, tenant: str | None = None) -> dict:
        """One record; NotFound when absent or owned by another tenant (never reveal which)."""
        where, params = "id = ?", [id_]
        if tenant is not None:
            where, params = "id = ? AND tenant = ?", [id_, tenant]
        rows = self._select(table, where, params)
        if not rows:
            raise NotFound(id_)
        return rows[0]

    def find(self, table: str, **equals) -> list[dict]:
        where = " AND ".join(f"{k} = ?" for k in equals) or "TRUE"
        return self._select(table, where, list(equals.values()), "ORDER BY created_at DESC, id DESC")

    def page(self, table: str, tenant: str, limit: int, cursor: str | None, **equals) -> tuple[list[dict], str | None]:
        """Newest first; the cursor encodes the (created_at, id) of the last item returned."""
        where = ["tenant = ?"] + [f"{k} = ?" for k in equals]
        params: list = [tenant, *equals.values()]
        if cursor:
            created, last_id = decode_cursor(cursor)
            where.append("(created_at, id) < (?, ?)")
            params += [created, last_id]
        rows = self._select(table, " AND ".join(where), params,
                            f"ORDER BY created_at DESC, id DESC LIMIT {int(limit) + 1}")
        more = len(rows) > limit
        rows = rows[:limit]
        nxt = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more and rows else None
        return rows, nxt

    def counts(self, table: str, *columns: str) -> list[tuple]:
        """(value, …, count) for each combination of `columns` (for metrics)."""
        cols = ", ".join(c for c in columns if c in TABLES[table])
        with self.lock:
            return self.con.execute(f"SELECT {cols}, count(*) FROM {table} GROUP BY ALL").fetchall()

    def delete(self, table: str, id_: str) -> None:
        with self.lock:
            self.con.execute(f"DELETE FROM {table} WHERE id = ?", [id_])


def encode_cursor(created_at: str, id_: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at}|{id_}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        created, _, id_ = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
    except Exception as e:  # noqa: BLE001 - any garbage is the caller's mistake
        raise ValueError("cursor is not one this server issued") from e
    if not id_:
        raise ValueError("cursor is not one this server issued")
    return created, id_
