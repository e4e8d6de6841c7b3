"""Auxiliary models: those trained by jobs, and local Hugging Face checkpoints registered by users."""
from __future__ import annotations

import os

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import Field, field_validator

from service.errors import ERROR_RESPONSES, ApiError
from service.routes.common import Limit, ResolveIds, Svc, Tenant, owned, page
from service.routes.corpora import tenant_access
from service.schemas import Model, ModelList, Name, no_nul
from storage.errors import DomainError
from workers.driver.lifecycle import register_checkpoint
from workers.models import inspect_hf_checkpoint
from workers.specs import MAX_STR, KnownFields, LimitExceeded

router = APIRouter(prefix="/v1/models", tags=["models"], responses=ERROR_RESPONSES, dependencies=[ResolveIds])


class RegisterModel(KnownFields):
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
    access = tenant_access(s)
    path = os.path.abspath(body.path[len("file://"):] if body.path.startswith("file://") else body.path)
    try:
        if "://" in body.path and not body.path.startswith("file://"):
            raise DomainError("forbidden_uri", "not a local path")
        access.check_local(path, body.path)
    except DomainError:
        raise ApiError(403, "forbidden_path", f"{body.path} is not a local directory under an allowed root "
                       "(THRESHER_ALLOWED_ROOTS)", {"field": "path"}) from None
    # Every file is resolved and checked by the worker that loads it, at that moment, and again by
    # each worker that loads the model later (a folder may change after its registration).
    try:
        meta = await run_in_threadpool(inspect_hf_checkpoint, path, access,
                                        s.engine.config.limits.max_model_params)
    except LimitExceeded:
        raise
    except DomainError as e:    # a file of the folder leads out of the roots, or no config.json
        code = e.code if e.code == "not_a_checkpoint" else "bad_checkpoint"
        raise ApiError(422, code, e.message, {**e.details, "field": "path"}) from None
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
