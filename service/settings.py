"""Service configuration, read from THRESHER_* environment variables (pydantic-settings)."""
from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from storage.fs import DEFAULT_TIMEOUT_S
from storage.ingest.shards import SHARD_COMPRESSIONS
from storage.query import parse_size
from workers.specs import SpecLimits


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
    max_parse_tasks: int = Field(4, ge=1)
    """Uploads (and Parquet or JSON loss bodies) parsed at once, each by a Ray worker process; more
    wait for a slot (without holding a thread) up to `parse_wait_s`, then answer 503 with Retry-After."""
    parse_wait_s: float = Field(30.0, ge=0)
    """How long a body waits for a parse slot before the 503."""
    split_bytes: int = 256 * 1024**2
    """Registered uncompressed JSONL files larger than this are ingested in byte ranges of this size."""
    shard_size: int = 10_000
    """Documents per corpus shard: the unit of parallel work and of resume."""
    shard_compression: Literal[SHARD_COMPRESSIONS] = "zstd"
    """The Parquet codec of corpus shards written by ingestion and exports: zstd is the smallest, lz4
    about a third larger on English text but cheaper to write (and to read back)."""
    allowed_roots: Annotated[list[str], NoDecode] = []
    """Server-side directories, or object-store prefixes with their options
    (`s3://bucket/data?endpoint_override=host:port&scheme=http`), that POST /v1/corpora {"uri": …} and
    POST /v1/models may read. An object store's endpoint, scheme and credentials come from here (or
    the environment), never from a tenant's URI."""
    max_input_files: int = 100_000
    """The most files one registration may name (422 past it)."""
    listing_timeout_s: float = 60.0
    """How long listing what one registration names may take (422 past it)."""
    host: str = "127.0.0.1"
    port: int = 8321
    max_inflight: int = 0
    """Shard tasks in flight per job stage; 0 = twice the cluster's CPUs."""
    max_concurrent_jobs: int = Field(2, ge=0)
    """Heavy jobs (trainings, scoring, large selections) run at once; more wait in `queued`."""
    light_concurrent_jobs: int = Field(2, ge=1)
    """Light jobs (exports, corpus filters, selections over at most THRESHER_LIGHT_MAX_DOCS
    documents) run at once in a lane of their own, whatever the heavy jobs hold."""
    light_max_docs: int = Field(10_000, ge=0)
    """A selection (random, dsir) is light when the corpora it reads hold at most this many documents."""
    light_workers: int = Field(2, ge=1)
    """Warm worker processes (Ray actors reserving no CPU) that run the light lane's tasks: no
    training can hold them up, and they take at most this many cores beside trainings."""
    task_retries: int = 3
    max_job_attempts: int = Field(3, ge=1)
    """A job found running at start-up (its service was killed, or crashed, while it ran) this many
    times is failed rather than resumed: a job that kills its process must not do it forever. An
    orderly shutdown (SIGTERM) does not count."""
    max_projection_mixtures: int = Field(256, ge=1)
    """The most pilot mixtures a `projection` may ask for a pilot size: its grid of automatic pilots
    (C(1/grid_step + m − 1, m − 1) for m sources; each trains 2 × repeats proxies) or its measured
    pilots at one size."""
    max_train_tokens: int = Field(1_000_000_000, ge=1000)
    """The largest training budget (tokens) a spec may ask for, and the budget of fine-tunes given
    none: about a day of the tiny preset on a CPU node (~10k tokens/s), or hours of the 150m preset
    on one GPU."""
    max_model_params: int = Field(200_000_000, ge=1)
    """The most parameters of a model a job trains (counted from its architecture) or a registered
    checkpoint declares (counted from its config.json before anything is loaded): training holds 16
    bytes a parameter (3.2 GB at the default), loading 4."""
    query_timeout_s: float = 30.0
    query_memory: str = "1GB"
    """DuckDB's memory limit for one query (past it DuckDB spills, up to THRESHER_DUCKDB_MAX_TEMP)."""
    query_process_memory: str = "2GB"
    """The resident memory of the process that runs one query (each runs in its own, never in the
    service): past it the query is stopped with a 400 query_too_large."""
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

    @field_validator("query_process_memory")
    @classmethod
    def _check_size(cls, v):
        parse_size(v)  # a ValueError names the value
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
    def spec_limits(self) -> SpecLimits:
        return SpecLimits(max_projection_mixtures=self.max_projection_mixtures, max_train_tokens=self.max_train_tokens,
                          max_model_params=self.max_model_params)

    @property
    def resolved_ray_address(self) -> str | None:
        return self.ray_address or os.environ.get("RAY_ADDRESS") or None

    def keys_by_token(self) -> dict[str, str]:
        return {key: tenant for tenant, _, key in (p.partition(":") for p in self.api_keys)}
