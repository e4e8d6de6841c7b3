"""The startup janitor: removes what a killed service left behind, and only what no catalog row
references.

Run once when the service starts, before it answers requests (so nothing of this process is in
flight). Each kind of leftover is removed only when it is older than `started` (the process start),
so a task of a previous process that is still finishing on a Ray cluster never loses a file it is
writing this very second:

- upload spool files: `<home>/uploads/*` and `uploads/` in the store;
- corpus folders `corpora/<id>/` that no catalog row names (an upload that died before its row);
- temporaries `.tmp-*` anywhere in a local store (an object store publishes objects whole);
- `/readyz` probe files under `.probe/`;
- DuckDB spill directories under `<home>/tmp`.

A store that fails (no bucket, not answering) does not stop the service from starting (its
/readyz says why it is not ready): what lies in the store is swept at the next start.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from storage import layout
from storage.catalog import Catalog
from storage.errors import DomainError
from storage.fs import TMP_PREFIX, Store

log = logging.getLogger("thresher.janitor")


@dataclass
class Swept:
    spool_files: int = 0
    corpora: list[str] = field(default_factory=list)
    temporaries: int = 0
    probes: int = 0
    scratch: int = 0

    def total(self) -> int:
        return self.spool_files + len(self.corpora) + self.temporaries + self.probes + self.scratch


def _old(info: pafs.FileInfo, started: float) -> bool:
    mtime = info.mtime
    return mtime is None or mtime.timestamp() < started


def _local_leftovers(folder: str, started: float) -> int:
    """Remove the entries of a local folder older than `started`; returns how many."""
    removed = 0
    if not os.path.isdir(folder):
        return 0
    for entry in os.scandir(folder):
        if entry.stat(follow_symlinks=False).st_mtime >= started:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            os.unlink(entry.path)
        removed += 1
    return removed


def _store_leftovers(store: Store, folder: tuple[str, ...], started: float) -> int:
    removed = 0
    for parts, info in store.entries(*folder):
        if _old(info, started):
            store.delete(*parts)
            removed += 1
    return removed


def _orphan_corpora(catalog: Catalog, store: Store, started: float) -> list[str]:
    known = {row["id"] for row in catalog.find("corpora")}
    removed = []
    for parts, info in store.entries(*layout.corpora()):
        corpus_id = parts[-1]
        if info.type != pafs.FileType.Directory or corpus_id in known:
            continue
        files = [i for _, i in store.entries(*parts, recursive=True)]
        if all(_old(i, started) for i in files):
            store.delete(*parts)
            removed.append(corpus_id)
    return removed


def _temporaries(store: Store, started: float) -> int:
    if not store.local:
        return 0
    removed = 0
    for parts, info in store.entries(recursive=True):
        if info.type == pafs.FileType.File and parts[-1].startswith(TMP_PREFIX) and _old(info, started):
            store.delete(*parts)
            removed += 1
    return removed


def sweep(catalog: Catalog, store: Store, *, spool_dir: str, scratch_dir: str, started: float) -> Swept:
    """Remove the leftovers described above; returns what was removed."""
    swept = Swept()
    swept.spool_files = _local_leftovers(spool_dir, started)
    swept.scratch = _local_leftovers(scratch_dir, started)
    try:
        swept.spool_files += _store_leftovers(store, layout.uploads(), started)
        swept.corpora = _orphan_corpora(catalog, store, started)
        swept.probes = _store_leftovers(store, layout.probes(), started)
        swept.temporaries = _temporaries(store, started)
    except (OSError, DomainError) as e:
        log.warning("the storage failed, its leftovers are not swept: %s", e)
    if swept.total():
        log.info("janitor removed %d spool files, %d orphan corpora %s, %d temporaries, %d probe files, "
                 "%d DuckDB spill directories", swept.spool_files, len(swept.corpora), swept.corpora,
                 swept.temporaries, swept.probes, swept.scratch)
    return swept
