"""Curriculum runs: a training loop fetches each epoch's samples and posts the losses it saw."""
from __future__ import annotations

import uuid
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field

from service.bodies import parse_slot, spool
from service.errors import ERROR_RESPONSES, ApiError
from service.routes.common import Svc, Tenant, owned
from storage import layout
from storage.encode import MEDIA_TYPES
from workers.driver.curriculum_runs import describe, losses_body_limit, parse_losses

router = APIRouter(prefix="/v1/curricula", tags=["curricula"], responses=ERROR_RESPONSES)


class Curriculum(BaseModel):
    id: str
    job_id: str
    corpus_id: str
    method: Literal["seta", "infobatch"]
    epoch: int = Field(description="the current epoch: its plan is served and its losses accepted")
    epochs: int
    num_samples: int
    saved_fraction: float = Field(description="pruned sample-visits so far / (N · epochs)")
    losses_posted: int = Field(description="losses received for the current epoch")
    params: dict
    cost: dict
    created_at: str


class EpochPlan(BaseModel):
    epoch: int
    doc_ids: list[str]
    weights: list[float] | None


def _run(s, run_id: str, tenant: str) -> dict:
    return owned(s, "curricula", run_id, tenant)


@router.get("/{curriculum_id}", response_model=Curriculum)
def get_curriculum(curriculum_id: str, tenant: str = Tenant, s=Svc):
    rec = _run(s, curriculum_id, tenant)
    info = describe(s.store, curriculum_id)
    return Curriculum(id=rec["id"], job_id=rec["job_id"], corpus_id=rec["corpus_id"], created_at=rec["created_at"],
                      **{k: info[k] for k in ("method", "epoch", "epochs", "num_samples", "saved_fraction",
                                              "losses_posted", "params", "cost")})


@router.get("/{curriculum_id}/epochs/{epoch}", response_model=EpochPlan,
            responses={200: {"content": {MEDIA_TYPES["parquet"]: {}}}})
async def get_epoch(curriculum_id: str, epoch: int, format: Literal["json", "parquet"] = "json",
                    tenant: str = Tenant, s=Svc):
    """The samples to train on in `epoch`, in order. Asking for the epoch after the current one
    moves the run forward (once that epoch's losses were posted)."""
    _run(s, curriculum_id, tenant)
    ids, weights = await run_in_threadpool(s.curricula.plan, curriculum_id, epoch)
    s.catalog.update("curricula", curriculum_id, epoch=max(epoch, _run(s, curriculum_id, tenant)["epoch"]))
    if format == "parquet":
        cols = {"doc_id": ids}
        if weights is not None:
            cols["weight"] = pa.array(weights)
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table(cols), sink)
        return Response(sink.getvalue().to_pybytes(), media_type=MEDIA_TYPES["parquet"])
    return EpochPlan(epoch=epoch, doc_ids=ids.to_pylist(), weights=None if weights is None else weights.tolist())


@router.post("/{curriculum_id}/losses", response_model=Curriculum,
             openapi_extra={"requestBody": {"content": {
                 "application/json": {"schema": {"$ref": "#/components/schemas/LossPost"}},
                 MEDIA_TYPES["parquet"]: {"schema": {"type": "string", "format": "binary",
                                                     "description": "columns doc_id, loss; ?epoch= in the query"}}}}})
async def post_losses(curriculum_id: str, request: Request, epoch: int | None = None,
                      tenant: str = Tenant, s=Svc):
    """Per-sample losses seen in the current epoch, as JSON or as a Parquet body (`doc_id`, `loss`
    columns, `?epoch=`). Unknown ids, non-finite losses or another epoch answer 4xx and change nothing."""
    _run(s, curriculum_id, tenant)
    parquet = request.headers.get("content-type", "").split(";")[0].strip() == MEDIA_TYPES["parquet"]
    if parquet and epoch is None:
        raise ApiError(422, "validation_error", "epoch: give ?epoch= with a Parquet body", {"field": "epoch"})
    doc_ids = await run_in_threadpool(s.curricula.doc_ids, curriculum_id)
    limit = losses_body_limit(doc_ids, s.settings.max_upload_bytes)
    body = layout.upload(uuid.uuid4().hex)
    try:   # the body goes into storage and a Ray worker parses it, as an upload's does
        await spool(request, s.store, body, limit, "the losses body", f" (a run of {len(doc_ids)} documents "
                    "needs no more; THRESHER_MAX_UPLOAD_BYTES at the most)")
        async with parse_slot(s):
            posted_epoch, ids, losses = await run_in_threadpool(
                parse_losses, s.store, body, parquet, doc_ids, s.settings.max_decompressed_bytes)
    finally:
        await run_in_threadpool(s.store.delete, *body)
    await run_in_threadpool(s.curricula.post_losses, curriculum_id, epoch if parquet else posted_epoch, ids, losses)
    return get_curriculum(curriculum_id, tenant, s)
