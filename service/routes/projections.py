"""Projections: predictions from a finished `projection` job, and its plot."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, Field

from service.errors import ERROR_RESPONSES, ApiError
from service.routes.common import Svc, Tenant, owned
from storage import layout
from workers.jobs.projection import predict, simplex_problem
from workers.specs import Docs, KnownFields

router = APIRouter(tags=["projections"], responses=ERROR_RESPONSES)


class PredictRequest(KnownFields):
    # Each mixture is an OT solve on a Ray worker while the request waits (about a second on a
    # thousand revealed points): a few hundred at most. Sizes cost nothing once a mixture is solved.
    mixtures: list[list[float]] = Field(min_length=1, max_length=256)
    sizes: list[Docs] = Field(min_length=1, max_length=1000)


class Prediction(BaseModel):
    size: int
    mixture: list[float]
    predicted: float


class PredictResponse(BaseModel):
    predictions: list[Prediction]


def _finished_projection(s, job_id: str, tenant: str) -> dict:
    job = owned(s, "jobs", job_id, tenant)
    if job["kind"] != "projection":
        raise ApiError(409, "not_a_projection", f"job {job_id} is a {job['kind']} job, not a projection")
    if job["state"] != "succeeded":
        raise ApiError(409, "projection_not_ready", f"job {job_id} is {job['state']}; wait for it to succeed")
    return job


@router.post("/v1/projections/{job_id}/predict", response_model=PredictResponse)
async def predict_mixtures(job_id: str, body: PredictRequest, tenant: str = Tenant, s=Svc):
    """The fitted projection's metric for any mixtures (each on the simplex, one weight per source
    in the order of the job's `sources`) at any sizes."""
    job = _finished_projection(s, job_id, tenant)
    m = len(job["spec"]["sources"])
    for i, mix in enumerate(body.mixtures):
        where = f"mixtures.{i}"
        if len(mix) != m:
            raise ApiError(422, "validation_error", f"{where}: {len(mix)} weights for {m} sources", {"field": where})
        problem = simplex_problem(mix)
        if problem:
            raise ApiError(422, "validation_error", f"{where}: {problem}", {"field": where})
    preds = await run_in_threadpool(predict, s.store, job_id, body.mixtures, body.sizes)
    return PredictResponse(predictions=preds)


@router.get("/v1/jobs/{job_id}/plot", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
def projection_plot(job_id: str, tenant: str = Tenant, s=Svc):
    """Projected metric against size for the optimum, the uniform mixture and each single source,
    with the pilots marked (PNG)."""
    _finished_projection(s, job_id, tenant)
    return Response(s.store.read_bytes(*layout.job_file(job_id, "plot")), media_type="image/png")
