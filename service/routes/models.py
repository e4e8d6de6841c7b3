"""Auxiliary models: those trained by jobs, and local Hugging Face checkpoints registered by users."""
from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, field_validator

from service.errors import ERROR_RESPONSES, ApiError
from service.routes.common import Limit, Svc, Tenant, owned, page
from service.routes.corpora import allowed_uri
from service.schemas import Model, ModelList, Name, no_nul
from workers.driver.lifecycle import register_checkpoint
from workers.models import inspect_hf_checkpoint
from workers.specs import MAX_STR

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES)


class RegisterModel(BaseModel):
    """A local Hugging Face causal-LM checkpoint directory (weights + tokenizer) that every Ray
    worker can read, under an allowed root. Loaded with `local_files_only`: nothing is downloaded."""
    name: Name = Field(min_length=1)
    path: str = Field(min_length=1, max_length=MAX_STR)

    @field_validator("path")
    @classmethod
    def _no_nul(cls, v: str) -> str:
        return no_nul(v)


def model_view(rec: dict) -> Model:
    return Model(**{k: v for k, v in rec.items() if k in Model.model_fields})


@router.post("", status_code=201, response_model=Model)
async def register_model(body: RegisterModel, tenant: str = Tenant, s=Svc):
    uri = allowed_uri(body.path, s.settings.allowed_roots)
    if uri is None or not uri.startswith("file://"):
        raise ApiError(403, "forbidden_path", f"{body.path} is not a local directory under an allowed root "
                       "(THRESHER_ALLOWED_ROOTS)", {"field": "path"})
    path = uri[len("file://"):]
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ApiError(422, "not_a_checkpoint", f"{body.path} has no config.json: not a Hugging Face "
                       "checkpoint directory", {"field": "path"})
    try:
        meta = await run_in_threadpool(inspect_hf_checkpoint, path)
    except ValueError as e:
        raise ApiError(422, "bad_checkpoint", str(e), {"field": "path"}) from None
    return model_view(register_checkpoint(s.catalog, tenant, body.name, meta))


@router.get("", response_model=ModelList)
def list_models(tenant: str = Tenant, s=Svc, limit: int = Limit, cursor: str | None = None):
    rows, nxt = page(s, "models", tenant, limit, cursor)
    return ModelList(items=[model_view(r) for r in rows], next_cursor=nxt)


@router.get("/{model_id}", response_model=Model)
def get_model(model_id: str, tenant: str = Tenant, s=Svc):
    return model_view(owned(s, "models", model_id, tenant))
