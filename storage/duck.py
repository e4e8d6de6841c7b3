"""In-memory DuckDB connections whose spill files stay in a directory the caller chooses.

DuckDB spills to `.tmp` under the process's working directory by default. Every connection made
here gets a private directory under `temp_root` (the system's temporary directory when none is
given; so concurrent connections never share spill files), bounded by `max_temp_size`, and removed
when the connection closes. Memory is bounded too (`memory_limit`, default DEFAULT_MEMORY): past it
DuckDB spills, so a selection over 5M documents does not hold them all in the service process.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator

import duckdb

TEMP_PREFIX = "duckdb-"
DEFAULT_MEMORY = "256MB"


@contextmanager
def spill_dir(temp_root: str | None = None) -> Iterator[str]:
    """A private directory under `temp_root` for one connection's spill files, removed afterwards
    (also when the connection lived in a process that was killed)."""
    temp_root = temp_root or tempfile.gettempdir()
    os.makedirs(temp_root, exist_ok=True)
    private = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=temp_root)
    try:
        yield private
    finally:
        shutil.rmtree(private, ignore_errors=True)


def connect(temp_directory: str, max_temp_size: str | None = None, **config) -> duckdb.DuckDBPyConnection:
    """An in-memory connection spilling into `temp_directory` (see spill_dir)."""
    config["temp_directory"] = temp_directory
    config.setdefault("memory_limit", DEFAULT_MEMORY)
    if max_temp_size:
        config["max_temp_directory_size"] = max_temp_size
    con = duckdb.connect(config=config)
    con.execute("SET enable_progress_bar = false")  # it would draw on the service's stdout
    return con


@contextmanager
def connection(temp_root: str | None = None, max_temp_size: str | None = None,
               **config) -> Iterator[duckdb.DuckDBPyConnection]:
    with spill_dir(temp_root) as private:
        con = connect(private, max_temp_size, **config)
        try:
            yield con
        finally:
            con.close()
