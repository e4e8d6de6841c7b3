"""A ready corpus's stored shards, one at a time (what `thresher.data.SelectionDataset` streams
through the API when it cannot read storage itself)."""
from __future__ import annotations

import pyarrow as pa
from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from service.errors import ERROR_RESPONSES, ApiError
from service.routes.common import ResolveIds, Svc, Tenant
from service.routes.corpora import _ready
from storage import layout
from storage.encode import MEDIA_TYPES, bounded_batches, encode

router = APIRouter(prefix="/v1/corpora", tags=["corpora"], responses=ERROR_RESPONSES, dependencies=[ResolveIds])


class CorpusShard(BaseModel):
    shard: int
    num_rows: int
    url: str


class CorpusShardList(BaseModel):
    items: list[CorpusShard]


@router.get("/{corpus_id}/shards", response_model=CorpusShardList)
def list_corpus_shards(corpus_id: str, request: Request, tenant: str = Tenant, s=Svc):
    """The corpus's shards in row order: documents `[sum of earlier num_rows, …)` of the corpus."""
    _ready(s, corpus_id, tenant)
    items = []
    for n, part in layout.corpus_shards(s.store, corpus_id):
        items.append(CorpusShard(shard=n, num_rows=s.store.parquet_file(*part).metadata.num_rows,
                                 url=str(request.url_for("download_corpus_shard", corpus_id=corpus_id, shard=n))))
    return CorpusShardList(items=items)


@router.get("/{corpus_id}/shards/{shard}", response_class=StreamingResponse,
            responses={200: {"content": {MEDIA_TYPES["parquet"]: {}}}})
def download_corpus_shard(corpus_id: str, shard: int, tenant: str = Tenant, s=Svc,
                          columns: str | None = Query(None, description="comma-separated subset of id,text,source")):
    """One stored shard as Parquet (columns `id`, `text`, `source`), whole or only `columns`."""
    _ready(s, corpus_id, tenant)
    part = dict(layout.corpus_shards(s.store, corpus_id)).get(shard)
    if part is None:
        raise ApiError(404, "not_found", f"corpus {corpus_id} has no shard {shard}", {"field": "shard"})
    if columns:
        wanted = list(dict.fromkeys(c.strip() for c in columns.split(",") if c.strip()))
        have = s.store.parquet_file(*part).schema_arrow.names
        bad = [c for c in wanted if c not in have]
        if bad:
            raise ApiError(422, "validation_error", f"columns: no column {bad[0]!r}; columns are {have}",
                           {"field": "columns"})
        pf = s.store.parquet_file(*part)   # streamed a bounded batch at a time, never whole
        schema = pa.schema([pf.schema_arrow.field(c) for c in wanted])
        return StreamingResponse(encode(bounded_batches(pf, wanted), schema, "parquet"),
                                 media_type=MEDIA_TYPES["parquet"])

    def chunks():
        with s.store.open_input(*part) as f:
            while chunk := f.read(1 << 20):
                yield chunk
    return StreamingResponse(chunks(), media_type=MEDIA_TYPES["parquet"],
                             headers={"Content-Length": str(s.store.size(*part))})
