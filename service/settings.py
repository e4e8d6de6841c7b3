"""Service configuration, read from THRESHER_* environment variables (pydantic-settings)."""
from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from storage.fs import DEFAULT_TIMEOUT_S
from storage.ingest.shards import SHARD_COMPRESSIONS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="THRESHER_", extra="ignore")

    home: str = ".thresher"
    """Local directory for the catalog (DuckDB) and upload spooling."""
    storage_uri: str | None = None
    """Where corpora, manifests and models live: a directory or an object-store URI (s3://…, gs://…).
    Default: <home>/store."""
    storage_timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0)
    """How long a request to an object store may go without progress before it fails (it is tried
    3 times): a store that stops answering fails a call within about three times this,
    answered 503 `storage_unavailable`. Ray workers read it from their own environment, like the
    store's credentials."""
    ray_address: str | None = None
    """Ray cluster to join; default: RAY_ADDRESS if set, else start a local Ray."""
    api_keys: Annotated[list[str], NoDecode] = []
    """`tenant:key` pairs (comma-separated in the environment). Empty: no auth, loopback only."""
    max_upload_bytes: int = 2 * 1024**3
    max_decompressed_bytes: int = 16 * 1024**3
    """What a compressed upload may inflate to (a decompression bomb answers 413)."""
    max_doc_bytes: int = 64 * 1024**2
    """The longest document (and line) accepted, uploaded or registered (413 past it)."""
    split_bytes: int = 256 * 1024**2
    """Registered uncompressed JSONL files larger than this are ingested in byte ranges of this size."""
    shard_size: int = 10_000
    """Documents per corpus shard: the unit of parallel work and of resume."""
    shard_compression: Literal[SHARD_COMPRESSIONS] = "zstd"
    """The Parquet codec of corpus shards written by ingestion and exports: zstd is the smallest, lz4
    about a third larger on English text but cheaper to write (and to read back)."""
    allowed_roots: Annotated[list[str], NoDecode] = []
    """Server-side directories (or URI prefixes) that POST /v1/corpora {"uri": …} may read."""
    host: str = "127.0.0.1"
    port: int = 8321
    max_inflight: int = 0
    """Shard tasks in flight per job stage; 0 = twice the cluster's CPUs."""
    max_concurrent_jobs: int = 2
    task_retries: int = 3
    query_timeout_s: float = 30.0
    query_memory: str = "1GB"
    query_max_rows: int = 100_000
    """The largest `limit` a query may ask for."""
    query_max_bytes: int = 32 * 1024**2
    """A query result larger than this (its JSON size, about) answers 413."""
    duckdb_max_temp: str = "4GB"
    """How much each DuckDB connection (query sandbox, selections) may spill under <home>/tmp."""
    metrics_token: str | None = None
    """Bearer token /metrics requires. Without it, /metrics answers only loopback clients."""

    @field_validator("api_keys", "allowed_roots", mode="before")
    @classmethod
    def _split_commas(cls, v):
        if isinstance(v, str):
            return [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, v):
        for pair in v:
            tenant, sep, key = pair.partition(":")
            if not sep or not tenant or not key:
                raise ValueError(f"API key entry {pair!r} must look like tenant:key")
        return v

    @property
    def store_root(self) -> str:
        return self.storage_uri or os.path.join(os.path.abspath(self.home), "store")

    @property
    def temp_dir(self) -> str:
        """DuckDB's spill files (one private directory per connection, removed when it closes)."""
        return os.path.join(os.path.abspath(self.home), "tmp")

    @property
    def resolved_ray_address(self) -> str | None:
        return self.ray_address or os.environ.get("RAY_ADDRESS") or None

    def keys_by_token(self) -> dict[str, str]:
        return {key: tenant for tenant, _, key in (p.partition(":") for p in self.api_keys)}
