"""The lifecycle of every resource, in one place: how corpora, jobs, manifests, models and curriculum
runs are created, committed and failed in the catalog (and, on failure, removed from storage).

Routers call these to turn a request into records; job kinds call the same functions when they
produce something. A resource becomes visible (a catalog row in its final state) only after all of
its files are in storage, so a reader never sees half of one:

    corpus     uploaded: files written → row `ready`.  registered/exported: row `ingesting` + a job
               → files → `ready` (commit_corpus), or `failed` with its files removed (fail_corpus);
               filtered: the running job inserts the row `ingesting` (create_job_corpus), then the same
    job        row `queued` (submit_job) → `running` → `succeeded` | `failed` | `cancelled` (engine)
    manifest   parts written → row (commit_manifest; idempotent, a resumed job may commit again)
    model      trained: checkpoint written, meta.json last → row (commit_trained_model);
               registered: checkpoint checked → row (register_checkpoint)
    curriculum state written → row (commit_curriculum)
"""
from __future__ import annotations

from storage import layout
from storage.catalog import Catalog, NotFound, new_id, now
from storage.fs import Store

CORPUS_STATS = ("num_docs", "num_bytes", "num_shards", "num_empty", "sources")


# -- jobs ----------------------------------------------------------------------------------------

def job_record(tenant: str, kind: str, name: str | None, spec: dict, idempotency_key: str | None = None,
               request_hash: str | None = None, job_id: str | None = None) -> dict:
    return {"id": job_id or new_id("jobs"), "tenant": tenant, "kind": kind, "name": name, "state": "queued",
            "spec": spec, "created_at": now(), "idempotency_key": idempotency_key,
            "request_hash": request_hash, "attempts": 0}


def submit_job(engine, tenant: str, kind: str, name: str | None, spec: dict,
               idempotency_key: str | None = None, request_hash: str | None = None) -> tuple[dict, bool]:
    """Queue a job (the engine inserts its row and runs it); returns (the stored record, whether it
    is new). With an Idempotency-Key the check and the insert are one atomic catalog step, so
    concurrent submissions with one key get one job; the caller compares `request_hash`."""
    job = job_record(tenant, kind, name, spec, idempotency_key, request_hash)
    if idempotency_key is None:
        engine.submit(job)
        return engine.catalog.get("jobs", job["id"]), True
    stored, new = engine.catalog.insert_or_get("jobs", job, ("tenant", "idempotency_key"))
    if new:
        engine.enqueue(job["id"])
    return (engine.catalog.get("jobs", job["id"]) if new else stored), new


# -- corpora -------------------------------------------------------------------------------------

def _corpus_fields(stats: dict) -> dict:
    return {k: stats[k] for k in CORPUS_STATS if k in stats}


def _corpus_meta(stats: dict) -> dict:
    return {"empty_ids": stats.get("empty_ids", []), "ids_generated": stats.get("ids_generated"),
            "fields": stats.get("fields", {}), "json_fields": stats.get("json_fields", [])}


def create_uploaded_corpus(catalog: Catalog, corpus_id: str, tenant: str, name: str, stats: dict,
                           meta: dict) -> dict:
    """An upload whose shards are all written: the corpus appears `ready`."""
    rec = {"id": corpus_id, "tenant": tenant, "name": name, "state": "ready", "created_at": now(),
           **_corpus_fields(stats), "meta": {**_corpus_meta(stats), **meta}}
    return catalog.insert("corpora", rec)


def create_corpus_by_job(engine, tenant: str, name: str, kind: str, job_name: str, spec: dict) -> tuple[dict, dict]:
    """A corpus that a job fills (`ingest`, `export`): the row is `ingesting` until the job commits
    it; `spec` gets the new corpus's id as `corpus_id`. Returns (corpus, job)."""
    corpus_id = new_id("corpora")
    job = job_record(tenant, kind, job_name, {**spec, "corpus_id": corpus_id})
    engine.catalog.insert("corpora", {"id": corpus_id, "tenant": tenant, "name": name, "state": "ingesting",
                                      "created_at": now(), "job_id": job["id"], "sources": {}})
    engine.submit(job)
    return engine.catalog.get("corpora", corpus_id), engine.catalog.get("jobs", job["id"])


def create_job_corpus(catalog: Catalog, job: dict, corpus_id: str, name: str) -> dict:
    """A corpus a running job makes itself (`filter`): `ingesting` until the job commits it;
    inserted once (a resumed job finds its own)."""
    return _insert_once(catalog, "corpora", {"id": corpus_id, "tenant": job["tenant"], "name": name,
                                             "state": "ingesting", "created_at": now(), "job_id": job["id"],
                                             "sources": {}})


def commit_corpus(catalog: Catalog, corpus_id: str, stats: dict) -> None:
    catalog.update("corpora", corpus_id, state="ready", **_corpus_fields(stats), meta=_corpus_meta(stats))


def fail_corpus(catalog: Catalog, store: Store, corpus_id: str, error: dict | None) -> None:
    """The job that was filling the corpus failed: no shard of it stays behind."""
    catalog.update("corpora", corpus_id, state="failed", error=error)
    store.delete(*layout.corpus(corpus_id))


def delete_corpus(catalog: Catalog, store: Store, corpus_id: str) -> None:
    catalog.delete("corpora", corpus_id)
    store.delete(*layout.corpus(corpus_id))


# -- manifests, models, curriculum runs ----------------------------------------------------------

def _insert_once(catalog: Catalog, table: str, rec: dict) -> dict:
    """Insert unless the row exists: a resumed job may commit what it committed before."""
    try:
        return catalog.get(table, rec["id"])
    except NotFound:
        return catalog.insert(table, rec)


def commit_manifest(catalog: Catalog, job: dict, manifest_id: str, kind: str, info: dict,
                    meta: dict | None = None) -> dict:
    """Register a manifest whose parts are all written."""
    return _insert_once(catalog, "manifests", {
        "id": manifest_id, "tenant": job["tenant"], "job_id": job["id"], "kind": kind,
        "created_at": now(), "meta": meta or {}, **info})


def commit_trained_model(catalog: Catalog, job: dict, model_id: str, name: str, meta: dict) -> dict:
    """Register a model whose checkpoint is complete in storage."""
    return _insert_once(catalog, "models", {
        "id": model_id, "tenant": job["tenant"], "name": name, "source": "trained", "job_id": job["id"],
        "created_at": now(), "meta": meta})


def register_checkpoint(catalog: Catalog, tenant: str, name: str, meta: dict) -> dict:
    """A local Hugging Face checkpoint, already loaded once to check it."""
    return catalog.insert("models", {"id": new_id("models"), "tenant": tenant, "name": name,
                                     "source": "huggingface", "job_id": None, "created_at": now(),
                                     "meta": meta})


def commit_curriculum(catalog: Catalog, job: dict, run_id: str, method: str, corpus_id: str,
                      epochs: int, params: dict) -> dict:
    """Register a curriculum run whose state is written."""
    return _insert_once(catalog, "curricula", {
        "id": run_id, "tenant": job["tenant"], "job_id": job["id"], "method": method,
        "corpus_id": corpus_id, "epoch": 0, "epochs": epochs, "created_at": now(), "params": params,
        "stats": {}})
