"""Manifests: metadata, streamed downloads, per-shard filtered manifests, export as a corpus."""
from __future__ import annotations

from typing import Literal

import pyarrow.compute as pc
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from service.bodies import attachment
from service.errors import ERROR_RESPONSES, ApiError
from service.routes.common import Limit, ResolveIds, Svc, Tenant, owned, page, resolve
from service.routes.jobs import job_view
from service.schemas import ExportRequest, Job, Manifest, ManifestList, ManifestShard, ShardList
from storage import layout
from storage.encode import MEDIA_TYPES, bounded_batches, encode
from storage.manifests import manifest_files
from workers.driver.lifecycle import create_corpus_by_job
from workers.jobs.ingest import ExportSpec
from workers.jobs.restrict import check_restrictions

router = APIRouter(prefix="/v1/manifests", tags=["manifests"], responses=ERROR_RESPONSES, dependencies=[ResolveIds])
Format = Literal["parquet", "csv", "jsonl"]
DOWNLOAD = {200: {"content": {m: {} for m in MEDIA_TYPES.values()}}}


def manifest_view(rec: dict) -> Manifest:
    return Manifest(**{k: v for k, v in rec.items() if k in Manifest.model_fields},
                    built_on=(rec.get("meta") or {}).get("built_on") or [])


def _stream(s, parts, fmt: str, selected_only: bool, filename: str) -> StreamingResponse:
    schema = s.store.parquet_file(*parts[0]).schema_arrow
    only_selected = selected_only and "selected" in schema.names

    def batches():   # part by part, a bounded batch at a time: constant memory per download
        for part in parts:
            for batch in bounded_batches(s.store.parquet_file(*part)):
                if only_selected:
                    batch = batch.filter(pc.fill_null(batch.column("selected"), False))
                yield batch if batch.schema == schema else batch.cast(schema)
    return StreamingResponse(encode(batches(), schema, fmt), media_type=MEDIA_TYPES[fmt],
                             headers={"Content-Disposition": attachment(f"{filename}.{fmt}")})


@router.get("", response_model=ManifestList)
def list_manifests(tenant: str = Tenant, s=Svc, limit: int = Limit, cursor: str | None = None):
    rows, nxt = page(s, "manifests", tenant, limit, cursor)
    return ManifestList(items=[manifest_view(r) for r in rows], next_cursor=nxt)


@router.get("/{manifest_id}", response_model=Manifest)
def get_manifest(manifest_id: str, tenant: str = Tenant, s=Svc):
    return manifest_view(owned(s, "manifests", manifest_id, tenant))


@router.get("/{manifest_id}/download", response_class=StreamingResponse, responses=DOWNLOAD)
def download_manifest(manifest_id: str, format: Format = "parquet", selected_only: bool = False,
                      tenant: str = Tenant, s=Svc):
    owned(s, "manifests", manifest_id, tenant)
    return _stream(s, manifest_files(s.store, manifest_id), format, selected_only, manifest_id)


@router.get("/{manifest_id}/shards", response_model=ShardList)
def list_shards(manifest_id: str, request: Request, tenant: str = Tenant, s=Svc):
    owned(s, "manifests", manifest_id, tenant)
    items = []
    for shard, parts in layout.manifest_parts(s.store, manifest_id):
        meta = s.store.parquet_file(*parts)
        selected = 0
        if "selected" in meta.schema_arrow.names:
            col = meta.read(columns=["selected"])["selected"]
            selected = int(col.to_numpy(zero_copy_only=False).sum())
        url = str(request.url_for("download_shard", manifest_id=manifest_id, shard=shard))
        items.append(ManifestShard(shard=shard, num_rows=meta.metadata.num_rows, num_selected=selected, url=url))
    return ShardList(items=items)


@router.get("/{manifest_id}/shards/{shard}", response_class=StreamingResponse, responses=DOWNLOAD)
def download_shard(manifest_id: str, shard: int, format: Format = "parquet", selected_only: bool = True,
                   tenant: str = Tenant, s=Svc):
    """One corpus shard's manifest rows (by default only the selected ones)."""
    owned(s, "manifests", manifest_id, tenant)
    part = layout.manifest_part(manifest_id, shard)
    if not s.store.exists(*part):
        raise ApiError(404, "not_found", f"manifest {manifest_id} has no shard {shard}", {"shard": shard})
    return _stream(s, [part], format, selected_only, f"{manifest_id}-{shard:05d}")


@router.post("/{manifest_id}/export", status_code=202, response_model=Job)
def export_manifest(manifest_id: str, body: ExportRequest | None = None, tenant: str = Tenant, s=Svc):
    """Materialise the manifest's (selected) documents, with text, as a new corpus; the job's
    result names it (`corpus_id`)."""
    body = body or ExportRequest()
    man = owned(s, "manifests", manifest_id, tenant)
    if "selected" not in [c["name"] for c in man["columns"]] or "doc_id" not in [c["name"] for c in man["columns"]]:
        raise ApiError(409, "not_a_selection", f"manifest {manifest_id} is not a document selection")
    if (man["num_selected"] if body.selected_only else man["num_rows"]) == 0:
        raise ApiError(422, "empty_export", f"manifest {manifest_id} has no "
                       f"{'selected ' if body.selected_only else ''}rows: a corpus needs at least one document",
                       {"field": "selected_only", "manifest_id": manifest_id})
    name = body.name or f"{manifest_id}-{'selected' if body.selected_only else 'all'}"
    spec = ExportSpec(manifest=manifest_id, corpus_id="", selected_only=body.selected_only,
                      restrict=[resolve(s, "manifests", m, tenant, f"restrict.{i}")["id"]
                                for i, m in enumerate(body.restrict)],
                      compression=s.settings.shard_compression)
    check_restrictions(s.store, s.catalog, tenant, spec, root=())
    _, job = create_corpus_by_job(s.engine, tenant, name, "export", f"export {manifest_id}",
                                  spec.model_dump(exclude={"corpus_id"}))
    return job_view(job)
