"""The OpenAPI document, made complete: request bodies that routes parse by hand (because they also
accept non-JSON bodies) reference their models by name, so those models are added to
`components.schemas` here. tests/test_openapi.py validates the document and runs schemathesis."""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from service.schemas import RegisterCorpus
from workers.driver.curriculum_runs import LossPost

HAND_PARSED = (RegisterCorpus, LossPost)


def install(app: FastAPI, models: tuple[type[BaseModel], ...] = HAND_PARSED) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description,
                              routes=app.routes)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, sub in schema.pop("$defs", {}).items():
                    schemas.setdefault(name, sub)
                schemas.setdefault(model.__name__, schema)
            app.openapi_schema = doc
        return app.openapi_schema
    app.openapi = openapi
