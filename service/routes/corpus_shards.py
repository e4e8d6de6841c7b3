"""A ready corpus's stored shards, one at a time (what `thresher.data.SelectionDataset` streams
through the API when it cannot read storage itself)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from service.errors import ERROR_RESPONSES, ApiError
from service.routes.common import Svc, Tenant
from service.routes.corpora import _ready
from storage.encode import MEDIA_TYPES
from storage.ingest import corpus_shards

router = APIRouter(prefix="/v1/corpora", tags=["corpora"], responses=ERROR_RESPONSES)


class CorpusShard(BaseModel):
    shard: int
    num_rows: int
    url: str


class CorpusShardList(BaseModel):
    items: list[CorpusShard]


def _number(name: str) -> int:
    return int(name.split("-")[1].split(".")[0])


@router.get("/{corpus_id}/shards", response_model=CorpusShardList)
def list_corpus_shards(corpus_id: str, request: Request, tenant: str = Tenant, s=Svc):
    """The corpus's shards in row order: documents `[sum of earlier num_rows, …)` of the corpus."""
    _ready(s, corpus_id, tenant)
    items = []
    for name in corpus_shards(s.store, ("corpora", corpus_id)):
        n = _number(name)
        items.append(CorpusShard(shard=n, num_rows=s.store.parquet_file("corpora", corpus_id, name).metadata.num_rows,
                                 url=str(request.url_for("download_corpus_shard", corpus_id=corpus_id, shard=n))))
    return CorpusShardList(items=items)


@router.get("/{corpus_id}/shards/{shard}", response_class=StreamingResponse,
            responses={200: {"content": {MEDIA_TYPES["parquet"]: {}}}})
def download_corpus_shard(corpus_id: str, shard: int, tenant: str = Tenant, s=Svc,
                          columns: str | None = Query(None, description="comma-separated subset of id,text,source")):
    """One stored shard as Parquet (columns `id`, `text`, `source`), whole or only `columns`."""
    _ready(s, corpus_id, tenant)
    name = next((n for n in corpus_shards(s.store, ("corpora", corpus_id)) if _number(n) == shard), None)
    if name is None:
        raise ApiError(404, "not_found", f"corpus {corpus_id} has no shard {shard}", {"field": "shard"})
    part = ("corpora", corpus_id, name)
    if columns:
        wanted = [c.strip() for c in columns.split(",") if c.strip()]
        have = s.store.parquet_file(*part).schema_arrow.names
        bad = [c for c in wanted if c not in have]
        if bad:
            raise ApiError(422, "validation_error", f"columns: no column {bad[0]!r}; columns are {have}",
                           {"field": "columns"})
        sink = pa.BufferOutputStream()
        pq.write_table(s.store.parquet_file(*part).read(columns=wanted), sink)
        return Response(sink.getvalue().to_pybytes(), media_type=MEDIA_TYPES["parquet"])

    def chunks():
        with s.store.open_input(*part) as f:
            while chunk := f.read(1 << 20):
                yield chunk
    return StreamingResponse(chunks(), media_type=MEDIA_TYPES["parquet"],
                             headers={"Content-Length": str(s.store.size(*part))})
