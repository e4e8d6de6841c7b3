"""Small read-only endpoints that let a client (the dashboard) describe and browse what it has:
the job kinds with their spec schemas, who the caller is, a manifest's top and bottom documents
(or the members of one of a dedup manifest's duplicate clusters) with their text, the documents each
filter a manifest was built on rejected per source, and a curriculum run's samples kept per epoch."""
from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from service.errors import ERROR_RESPONSES, ApiError
from service.routes.common import ResolveIds, Svc, Tenant, owned, resolve
from service.routes.query import sandboxed
from storage import layout
from storage.ingest.common import MAX_SOURCES
from storage.manifests import dataset, manifest_corpus, manifest_files, rejections_sql
from workers.driver.curriculum_runs import planned_counts
from workers.jobs.restrict import check_restrict
from workers.registry import KINDS
from workers.specs import MAX_RESTRICT, ref_of

router = APIRouter(responses=ERROR_RESPONSES, dependencies=[ResolveIds])


class KindInfo(BaseModel):
    name: str
    description: str
    spec_schema: dict[str, Any] = Field(description="JSON Schema of the kind's `spec` (pydantic)")
    refs: dict[str, str] = Field(description="top-level spec fields that name another resource -> "
                                             "its collection (corpora, models, manifests)")


class KindList(BaseModel):
    items: list[KindInfo]


def kind_infos() -> list[KindInfo]:
    out = []
    for kind in KINDS.values():
        if kind.internal:
            continue
        refs = {name: ref.table for name, info in kind.spec.model_fields.items() if (ref := ref_of(info))}
        out.append(KindInfo(name=kind.name, description=kind.description,
                            spec_schema=kind.spec.model_json_schema(), refs=refs))
    return out


@router.get("/v1/kinds", response_model=KindList, tags=["jobs"])
def list_kinds(tenant: str = Tenant):
    """The job kinds one can submit, each with its spec's JSON Schema (fields, types, defaults)."""
    return KindList(items=kind_infos())


class WhoAmI(BaseModel):
    tenant: str
    auth: bool = Field(description="whether the service requires API keys")


@router.get("/v1/whoami", response_model=WhoAmI, tags=["ops"])
def whoami(request: Request, tenant: str = Tenant):
    """The caller's tenant (401 for a missing or unknown key when keys are configured)."""
    return WhoAmI(tenant=tenant, auth=bool(request.app.state.keys))


class Document(BaseModel):
    doc_id: str
    source: str | None = None
    score: float | None = None
    rank: int | None = None
    selected: bool | None = None
    text: str | None = Field(None, description="the first `snippet` characters (null if the corpus is gone)")
    num_chars: int | None = None
    cluster_id: int | None = Field(None, description="dedup: the document's duplicate cluster")
    cluster_size: int | None = None
    kept: bool | None = Field(None, description="dedup: the cluster's member that is kept")
    duplicate_of: str | None = Field(None, description="dedup: the kept member this one duplicates")
    matched_corpus: str | None = Field(None, description="dedup: the corpus already ingested that holds a duplicate")
    matched_doc: str | None = None


class DocumentList(BaseModel):
    items: list[Document]


DOC_COLUMNS = ("doc_id", "corpus_id", "shard", "row", "score")
CLUSTER_COLUMNS = ("doc_id", "corpus_id", "shard", "row", "cluster_id")
MAX_BIGINT = 2 ** 63 - 1


def _texts(store, rows: list[dict], snippet: int) -> None:
    """Attach each row's text, reading only the row groups of the corpus shards that hold them."""
    by_shard: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in rows:
        by_shard[(r["corpus_id"], int(r["shard"]))].append(r)
    shards_of: dict[str, dict] = {}
    for (corpus_id, shard), wanted in by_shard.items():
        if corpus_id not in shards_of:
            shards_of[corpus_id] = dict(layout.corpus_shards(store, corpus_id))
        parts = shards_of[corpus_id].get(shard)
        if parts is None:
            continue
        pf = store.parquet_file(*parts)
        starts, offset = [], 0
        for g in range(pf.metadata.num_row_groups):
            starts.append(offset)
            offset += pf.metadata.row_group(g).num_rows
        groups: dict[int, list[dict]] = defaultdict(list)
        for r in wanted:
            g = max(i for i, s in enumerate(starts) if s <= r["row"])
            groups[g].append(r)
        for g, members in groups.items():
            table = pf.read_row_group(g, columns=["id", "text"])
            for r in members:
                local = int(r["row"]) - starts[g]
                if 0 <= local < table.num_rows and str(table["id"][local].as_py()) == r["doc_id"]:
                    text = table["text"][local].as_py() or ""
                    r["text"], r["num_chars"] = text[:snippet], len(text)


@router.get("/v1/manifests/{manifest_id}/documents", response_model=DocumentList, tags=["manifests"])
async def manifest_documents(manifest_id: str, order: Literal["top", "bottom"] = "top",
                             n: int = Query(10, ge=1, le=100), selected: bool | None = None,
                             snippet: int = Query(300, ge=20, le=5000),
                             cluster_id: int | None = Query(None, ge=0, le=MAX_BIGINT, description=(
                                 "a dedup manifest's duplicate cluster: its members instead, the kept one "
                                 "first, then in corpus order (`order` does not apply)")),
                             tenant: str = Tenant, s=Svc):
    """The `n` documents with the highest (`top`) or lowest (`bottom`) score, or the members of one
    duplicate cluster, optionally only the selected (or unselected) ones, each with the start of its
    text from the corpus."""
    man = owned(s, "manifests", manifest_id, tenant)
    columns = {c["name"] for c in man["columns"]}
    if cluster_id is None:
        needed, optional = DOC_COLUMNS, ("source", "rank", "selected")
        where, order_by = "score IS NOT NULL AND NOT isnan(score)", f"score {'DESC' if order == 'top' else 'ASC'}, doc_id"
    else:
        needed = CLUSTER_COLUMNS
        optional = ("source", "selected", "cluster_size", "kept", "duplicate_of", "matched_corpus", "matched_doc")
        where, order_by = f"cluster_id = {cluster_id}", f"{'kept DESC, ' if 'kept' in columns else ''}shard, row"
    missing = [c for c in needed if c not in columns]
    if missing:
        code, what = ("not_a_selection", "document scores") if cluster_id is None else ("no_clusters", "duplicate clusters")
        raise ApiError(409, code, f"manifest {manifest_id} has no {what} (missing {', '.join(missing)})",
                       {"field": "cluster_id"} if cluster_id is not None else {})
    extra = [c for c in optional if c in columns]
    if selected is not None and "selected" in columns:
        where += f" AND selected = {'true' if selected else 'false'}"
    sql = f"SELECT {', '.join(needed + tuple(extra))} FROM m WHERE {where} ORDER BY {order_by} LIMIT {n}"
    data = dataset(s.store, manifest_files(s.store, manifest_id))
    result = json.loads(await run_in_threadpool(sandboxed, s, sql, {"m": data}, n))
    names = [c["name"] for c in result["columns"]]
    rows = [dict(zip(names, r)) for r in result["rows"]]
    if cluster_id is not None and not rows and selected is None:
        raise ApiError(404, "not_found", f"manifest {manifest_id} has no cluster {cluster_id}",
                       {"field": "cluster_id", "cluster_id": cluster_id})
    for r in rows:
        r["doc_id"] = str(r["doc_id"])
    await run_in_threadpool(_texts, s.store, rows, snippet)
    return DocumentList(items=[Document(**{k: v for k, v in r.items() if k in Document.model_fields}) for r in rows])


class FilterRejections(BaseModel):
    manifest_id: str
    kind: str
    job_id: str | None = None
    rejected: int = Field(description="the pool's documents this manifest does not select")
    excluded: int = Field(description="those it is the first of `filters` to reject (what a selection built on "
                                      "them records as `excluded_by`, and its summary as `excluded`)")


class SourceRejections(BaseModel):
    source: str | None
    pool: int
    selected: int = Field(description="documents the manifest itself selects")
    survivors: int = Field(description="documents no filter rejects")
    rejected: dict[str, int] = Field(description="filter manifest -> documents of this source it rejects")
    excluded: dict[str, int] = Field(description="filter manifest -> those it is the first to reject")


class Rejections(BaseModel):
    manifest_id: str
    corpus_id: str | None
    selected_only: bool
    filters: list[FilterRejections] = Field(description="in order: `restrict`, else what the manifest was built "
                                                        "on, else the manifest itself")
    pool: int
    selected: int
    survivors: int
    by_source: list[SourceRejections] = Field(description="one per source value of the pool (null last)")


REJECTION_COLUMNS = ("doc_id", "corpus_id", "shard", "row", "source", "selected")


@router.get("/v1/manifests/{manifest_id}/rejections", response_model=Rejections, tags=["manifests"])
async def manifest_rejections(manifest_id: str, restrict: list[str] = Query([], description=(
                                  "filter manifests over the same corpus (repeat the parameter); default: the "
                                  "manifests it was built on (`built_on`), else the manifest itself")),
                              selected_only: bool = Query(False, description=(
                                  "the pool is the manifest's selected documents only (what an export of it "
                                  "restricted by `restrict` draws from)")),
                              tenant: str = Tenant, s=Svc):
    """How many of the pool's documents each filter (a dedup, a decontamination, a quality filter,
    any selection) rejects, per source, and how many survive them all: for a selection built with
    `restrict`, for a cleaning manifest itself, or for an export's pool."""
    man = owned(s, "manifests", manifest_id, tenant)
    missing = [c for c in REJECTION_COLUMNS if c not in {c["name"] for c in man["columns"]}]
    if missing:
        raise ApiError(409, "not_a_selection", f"manifest {manifest_id} ({man['kind']}) has no per-document rows "
                       f"with a source and `selected` (missing {', '.join(missing)})")
    if len(restrict) > MAX_RESTRICT:
        raise ApiError(422, "validation_error", f"restrict: at most {MAX_RESTRICT} manifests, got {len(restrict)}",
                       {"field": "restrict", "max": MAX_RESTRICT})
    ids = [resolve(s, "manifests", m, tenant, f"restrict.{i}")["id"] for i, m in enumerate(restrict)]
    twice = next((i for n, i in enumerate(ids) if i in ids[:n]), None)
    if twice is not None:
        raise ApiError(422, "validation_error", f"restrict names manifest {twice} twice", {"field": "restrict"})
    corpus = manifest_corpus(s.store, manifest_id)
    await run_in_threadpool(check_restrict, s.store, s.catalog, tenant, corpus, ids, "restrict")
    ids = ids or (man.get("meta") or {}).get("built_on") or [manifest_id]
    tables = {"p": dataset(s.store, manifest_files(s.store, manifest_id)),
              **{f"f{k}": dataset(s.store, manifest_files(s.store, m)) for k, m in enumerate(ids)}}
    answer = json.loads(await run_in_threadpool(sandboxed, s, rejections_sql(len(ids), selected_only), tables,
                                                MAX_SOURCES + 1))
    names = [c["name"] for c in answer["columns"]]
    rows = [dict(zip(names, r)) for r in answer["rows"]]
    by_source = [SourceRejections(source=r["source"], pool=r["pool"], selected=r["selected"], survivors=r["survivors"],
                                  rejected={m: r[f"rejected_{k}"] for k, m in enumerate(ids)},
                                  excluded={m: r[f"excluded_{k}"] for k, m in enumerate(ids)}) for r in rows]
    filters = []
    for m in ids:
        rec = s.catalog.get("manifests", m, tenant)
        filters.append(FilterRejections(manifest_id=m, kind=rec["kind"], job_id=rec.get("job_id"),
                                        rejected=sum(r.rejected[m] for r in by_source),
                                        excluded=sum(r.excluded[m] for r in by_source)))
    return Rejections(manifest_id=manifest_id, corpus_id=corpus, selected_only=selected_only, filters=filters,
                      by_source=by_source, **{k: sum(getattr(r, k) for r in by_source)
                                              for k in ("pool", "selected", "survivors")})


class EpochCount(BaseModel):
    epoch: int
    kept: int = Field(description="samples in the epoch's plan")


class EpochCounts(BaseModel):
    num_samples: int
    items: list[EpochCount]


@router.get("/v1/curricula/{curriculum_id}/epochs", response_model=EpochCounts, tags=["curricula"])
def curriculum_epochs(curriculum_id: str, tenant: str = Tenant, s=Svc):
    """Samples kept in each epoch planned so far (of `num_samples`)."""
    owned(s, "curricula", curriculum_id, tenant)
    num_samples, counts = planned_counts(s.store, curriculum_id)
    return EpochCounts(num_samples=num_samples, items=[EpochCount(epoch=e, kept=c) for e, c in sorted(counts.items())])
