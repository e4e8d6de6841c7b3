"""Selections into training: `SelectionDataset`, a PyTorch IterableDataset of the documents a
selection manifest chose.

    ds = SelectionDataset("man_…", storage="s3://bucket/thresher")        # or client=Client(…)
    loader = DataLoader(ds, batch_size=32, num_workers=4)                    # block_size = 32 too
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for batch in loader: …                                               # batch["text"], ["doc_id"], ["index"]
    state = ds.state_dict(samples_seen=steps * 32 * world_size)              # resume mid-epoch later

The order of an epoch is a function of (selection, seed, epoch, shuffle_buffer) alone:
1. the manifest's shards (one per corpus shard that has selected documents) are permuted with
   a generator seeded by (seed, epoch);
2. consecutive shards are grouped into windows of at least `shuffle_buffer` documents, and each
   window's documents are permuted (seeded by seed, epoch, window): a bounded shuffle buffer;
3. that sequence is the epoch's global order, positions 0 … N−1.
Ranks and DataLoader workers only split it: block k = positions [k·B, (k+1)·B) with
B = `block_size` goes to rank k mod R, and that rank's j-th block to worker j mod W. A DataLoader
with `batch_size=B` takes one block from each worker in turn, so rank r's batches are its blocks
in order and, step by step across ranks, the batches are the global order — whatever the
number of workers. `index` in each item is its global position.

Memory: a worker holds one window's (shard, row) keys (integers) and the texts of its own
documents in that window (about shuffle_buffer / (R·W)), reading one shard's text column at a time;
weights of a reweight manifest are kept as (shard, row, weight) arrays.

Reading: from storage (`storage`: the service's THRESHER_STORAGE_URI, a directory or any URI that
`pyarrow.fs` opens: s3://, gs://, file://) where the training job can read it; else through the
API (`client`), one shard at a time. Each worker reads every shard of the selection (it needs a
share of every window), so I/O grows with R·W; storage reads the `id` and `text` columns and the
corpus's other fields (`fields`: all by default, or the ones named, or none).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import IterableDataset, get_worker_info

from storage import layout
from storage.fs import Store

@dataclass(frozen=True)
class _Shard:
    shard: int
    corpus: str
    count: int           # selected documents


class _StorageSource:
    """Reads manifest parts and corpus shards straight from the store (any pyarrow.fs URI or a
    directory), at the paths storage/layout.py gives them."""

    def __init__(self, storage: str, manifest: str):
        self.storage, self.manifest = storage, manifest
        self._store = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.storage, create=False)
        return self._store

    def __getstate__(self):
        return {"storage": self.storage, "manifest": self.manifest, "_store": None}

    def shards(self) -> list[_Shard]:
        parts = layout.manifest_parts(self.store, self.manifest)
        if not parts:
            raise FileNotFoundError(f"no manifest {self.manifest} under {self.storage}")
        out = []
        for n, path in parts:
            t = self.store.parquet_file(*path)
            cols = [c for c in ("corpus_id", "selected") if c in t.schema_arrow.names]
            head = t.read(columns=cols)
            count = int(pc.sum(head["selected"]).as_py() or 0) if "selected" in cols else head.num_rows
            if count:
                out.append(_Shard(n, head["corpus_id"][0].as_py(), count))
        return out

    def rows(self, s: _Shard) -> np.ndarray:
        part = self.store.parquet_file(*layout.manifest_part(self.manifest, s.shard))
        t = part.read(columns=[c for c in ("row", "selected") if c in part.schema_arrow.names])
        if "selected" in t.column_names:
            t = t.filter(t["selected"])
        return np.sort(t["row"].to_numpy())

    def docs(self, s: _Shard, rows: np.ndarray, columns: list[str] | None) -> pa.Table:
        shard = dict(layout.corpus_shards(self.store, s.corpus))[s.shard]
        return self.store.read_parquet(*shard, columns=columns).take(pa.array(rows))

    def table(self, manifest: str, columns: list[str]) -> pa.Table:
        return pa.concat_tables([self.store.read_parquet(*p, columns=columns)
                                 for _, p in layout.manifest_parts(self.store, manifest)])


class _ApiSource:
    """The same reads through the HTTP API (a client is made again in each worker process)."""

    def __init__(self, client, manifest: str):
        self.url, self.key, self.manifest = client.url, client.api_key, manifest
        self._client, self._pid = client, os.getpid()

    def __getstate__(self):
        return {"url": self.url, "key": self.key, "manifest": self.manifest, "_client": None, "_pid": None}

    @property
    def client(self):
        # A forked DataLoader worker must not share the parent's connection pool.
        if self._client is None or self._pid != os.getpid():
            from thresher.client import Client
            self._client, self._pid = Client(self.url, self.key), os.getpid()
        return self._client

    def shards(self) -> list[_Shard]:
        man = self.client.manifests.get(self.manifest)
        has_selected = "selected" in {c["name"] for c in man.columns}
        out, corpus = [], None
        for item in self.client.manifests.shards(self.manifest):
            count = item["num_selected"] if has_selected else item["num_rows"]
            if count:
                if corpus is None:
                    corpus = self.client.manifests.read_shard(self.manifest, item["shard"], selected_only=False)["corpus_id"][0].as_py()
                out.append(_Shard(item["shard"], corpus, count))
        return out

    def rows(self, s: _Shard) -> np.ndarray:
        t = self.client.manifests.read_shard(self.manifest, s.shard, selected_only=True)
        return np.sort(t["row"].to_numpy())

    def docs(self, s: _Shard, rows: np.ndarray, columns: list[str] | None) -> pa.Table:
        return self.client.corpora.read_shard(s.corpus, s.shard, columns=columns).take(pa.array(rows))

    def table(self, manifest: str, columns: list[str]) -> pa.Table:
        return self.client.manifests.to_arrow(manifest).select(columns)


def _dist(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class SelectionDataset(IterableDataset):
    """The selected documents of `manifest` as dicts {"text", "doc_id", "index"[, "weight"]} and the
    corpus's other stored fields (`source` and the input's extra fields: item["url"], …).

    manifest: a selection manifest id (or a `Manifest`); a manifest without a `selected` column
        (e.g. a reweight manifest) stands for all its rows.
    storage / client: read from the store (a directory or pyarrow.fs URI) or through the API.
    weights: a `reweight` manifest over the same corpus: each item gets its `weight`.
    seed, shuffle, shuffle_buffer: the epoch order (see the module doc); shuffle=False keeps
        corpus order.
    block_size: the per-rank batch size of the DataLoader (the unit split over ranks and
        workers; 1 also works when batches are built after the DataLoader).
    rank, world_size: default from torch.distributed, else $RANK / $WORLD_SIZE, else 0 / 1.
    transform: applied to each item in the worker (e.g. tokenisation).
    fields: the stored fields each item carries besides text and id: None (default) all of them,
        a list for those only, [] none (the least I/O). `text`, `doc_id`, `index`, `weight` are
        the dataset's own keys: a field of one of these names is not carried.
    """

    def __init__(self, manifest, *, storage: str | None = None, client=None, weights=None, seed: int = 0,
                 shuffle: bool = True, shuffle_buffer: int = 10_000, block_size: int = 1,
                 rank: int | None = None, world_size: int | None = None,
                 transform: Callable[[dict], Any] | None = None, fields: list[str] | None = None):
        super().__init__()
        self.manifest = getattr(manifest, "id", manifest)
        if (storage is None) == (client is None):
            raise ValueError("give exactly one of storage (a store URI or directory) or client")
        if shuffle_buffer < 1 or block_size < 1:
            raise ValueError("shuffle_buffer and block_size must be positive")
        self.source = _StorageSource(storage, self.manifest) if storage is not None else _ApiSource(client, self.manifest)
        self.seed, self.shuffle, self.shuffle_buffer, self.block_size = seed, shuffle, shuffle_buffer, block_size
        self.rank, self.world_size = _dist(rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world_size})")
        self.transform = transform
        self.columns = None if fields is None else ["id", "text", *[f for f in fields if f not in ("id", "text")]]
        self.shards = self.source.shards()
        self.num_samples = sum(s.count for s in self.shards)
        self.weights = self._load_weights(getattr(weights, "id", weights)) if weights is not None else None
        self.epoch, self._start, self._yielded = 0, 0, 0

    # -- the epoch's order -------------------------------------------------------------------------
    def _windows(self, epoch: int) -> list[tuple[int, list[_Shard]]]:
        """(first global position, shards) of each window of the epoch, in order."""
        order = list(self.shards)
        if self.shuffle:
            perm = np.random.default_rng([self.seed, epoch]).permutation(len(order))
            order = [order[i] for i in perm]
        windows, cur, size, start = [], [], 0, 0
        for s in order:
            cur.append(s)
            size += s.count
            if size >= self.shuffle_buffer:
                windows.append((start, cur))
                start, cur, size = start + size, [], 0
        if cur:
            windows.append((start, cur))
        return windows

    def _owner(self, pos: np.ndarray, num_workers: int) -> tuple[np.ndarray, np.ndarray]:
        block = pos // self.block_size
        return block % self.world_size, (block // self.world_size) % num_workers

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        epoch, start = self.epoch, self._start
        for w, (first, shards) in enumerate(self._windows(epoch)):
            size = sum(s.count for s in shards)
            if first + size <= start:
                continue                                  # consumed before the resume point
            keys_shard = np.concatenate([np.full(s.count, i) for i, s in enumerate(shards)])
            keys_row = np.concatenate([self.source.rows(s) for s in shards])
            if len(keys_row) != size:
                raise RuntimeError(f"manifest {self.manifest} changed while reading it")
            perm = np.random.default_rng([self.seed, epoch, w + 1]).permutation(size) if self.shuffle \
                else np.arange(size)
            pos = first + np.arange(size)                 # perm[i] sits at global position first + i
            rank_of, worker_of = self._owner(pos, workers)
            mine = np.flatnonzero((pos >= start) & (rank_of == self.rank) & (worker_of == worker))
            if not len(mine):
                continue
            chosen = perm[mine]                           # indices into this window's keys
            items: list[dict] = [{}] * len(mine)
            for i, s in enumerate(shards):                # one shard's columns at a time
                at = np.flatnonzero(keys_shard[chosen] == i)
                if not len(at):
                    continue
                docs = self.source.docs(s, keys_row[chosen[at]], self.columns)
                for j, doc in zip(at, docs.to_pylist()):
                    items[j] = doc
            for j, p in enumerate(pos[mine]):
                doc = dict(items[j])
                text, doc_id = doc.pop("text"), doc.pop("id")
                item = {**doc, "text": text, "doc_id": doc_id, "index": int(p)}
                if self.weights is not None:
                    s = shards[keys_shard[chosen[j]]]
                    item["weight"] = self._weight(s.shard, int(keys_row[chosen[j]]))
                if info is None:
                    self._yielded += 1
                yield self.transform(item) if self.transform else item

    def __len__(self) -> int:
        """Documents this rank gets in a whole epoch."""
        blocks = math.ceil(self.num_samples / self.block_size)
        mine = sum(min(self.block_size, self.num_samples - k * self.block_size)
                   for k in range(self.rank, blocks, self.world_size))
        return mine

    # -- epochs and resume ---------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` (from its beginning unless a state for this epoch was just loaded)."""
        if epoch != self.epoch:
            self.epoch, self._start, self._yielded = epoch, 0, 0

    def state_dict(self, samples_seen: int | None = None) -> dict:
        """Where the epoch stands. `samples_seen`: documents of this epoch consumed by all ranks
        together (e.g. steps × block_size × world_size). Without it, what this process iterated
        (num_workers=0) times world_size, plus any position it was resumed from."""
        if samples_seen is None:
            samples_seen = self._start + self._yielded * self.world_size
        return {"manifest": self.manifest, "seed": self.seed, "epoch": self.epoch,
                "samples_seen": int(samples_seen), "num_samples": self.num_samples,
                "shuffle": self.shuffle, "shuffle_buffer": self.shuffle_buffer, "block_size": self.block_size}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next iteration yields the rest of `state`'s epoch."""
        for k in ("manifest", "seed", "shuffle", "shuffle_buffer", "num_samples"):
            if state[k] != getattr(self, k):
                raise ValueError(f"state is for {k}={state[k]!r}, this dataset has {getattr(self, k)!r}")
        self.epoch, self._start, self._yielded = state["epoch"], state["samples_seen"], 0

    # -- weights ---------------------------------------------------------------------------------------
    def _load_weights(self, manifest: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        t = self.source.table(manifest, ["shard", "row", "weight"])
        out = {}
        shards = t["shard"].to_numpy()
        for s in np.unique(shards):
            sub = t.filter(pa.array(shards == s))
            rows, w = sub["row"].to_numpy(), sub["weight"].to_numpy(zero_copy_only=False)
            order = np.argsort(rows)
            out[int(s)] = (rows[order], w[order])
        return out

    def _weight(self, shard: int, row: int) -> float:
        rows, w = self.weights.get(shard, (np.empty(0, np.int64), None))
        i = np.searchsorted(rows, row)
        if i >= len(rows) or rows[i] != row:
            return float("nan")
        return float(w[i])
