"""The OpenAPI document is true: valid, complete, and the running app answers as it says
(schemathesis in-process, bounded, on a throwaway tenant of a throwaway home)."""
from __future__ import annotations

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from hypothesis import HealthCheck, Phase, given, settings

from tests.conftest import make_settings

FUZZ = {"Authorization": "Bearer key-fuzz"}
# Some rules a JSON schema cannot state: a query's SQL must parse, a cursor must be one the server
# issued, `select` takes exactly one of its fields, an upload's bytes must be a corpus in a format
# the server can tell, `name` is required as a query parameter or a form field. A schema-valid
# request that breaks one answers 400, 415 or 422 (never a 5xx), so those count as accepted here.
CONFIG = SchemathesisConfig.from_dict({"checks": {"positive_data_acceptance": {
    "expected-statuses": ["2XX", "400", "401", "403", "404", "409", "413", "415", "422"]}}})


def _operations() -> list[tuple[str, str]]:
    """(method, path) of every documented operation (the document needs no running service)."""
    from service.app import create_app
    from service.settings import Settings
    doc = create_app(Settings(home="unused")).openapi()
    return [(m.upper(), p) for p, ops in doc["paths"].items() for m in ops]


@pytest.fixture(scope="module")
def fuzz_schema(tmp_path_factory, ray_address):
    """The app of a throwaway home with one throwaway tenant; schemathesis starts its lifespan."""
    from schemathesis.python import asgi
    from service.app import create_app
    app = create_app(make_settings(tmp_path_factory.mktemp("fuzz-home"), ray_address, api_keys=["fuzz:key-fuzz"]))
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    finally:
        asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def openapi_doc(fuzz_schema):
    return fuzz_schema.raw_schema


@pytest.fixture(scope="module")
def fuzz_app(fuzz_schema):
    from fastapi.testclient import TestClient
    return TestClient(fuzz_schema.app, headers=FUZZ)  # the lifespan already runs


def refs(node) -> set[str]:
    if isinstance(node, dict):
        return {node["$ref"]} if "$ref" in node else set().union(*map(refs, node.values()), set())
    if isinstance(node, list):
        return set().union(*map(refs, node), set())
    return set()


def test_document_is_valid_and_complete(openapi_doc):
    from openapi_spec_validator import validate
    validate(openapi_doc)
    schemas = openapi_doc["components"]["schemas"]
    missing = sorted(r for r in refs(openapi_doc) if r.rsplit("/", 1)[1] not in schemas)
    assert not missing, missing
    assert {"RegisterCorpus", "LossPost"} <= set(schemas)
    for path, ops in openapi_doc["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in ops.items():
            assert {"403", "408", "413", "507"} <= set(op["responses"]), (method, path)
    metrics = openapi_doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]


def test_405_allows_every_method_of_the_path(fuzz_app):
    r = fuzz_app.put("/v1/corpora")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    r = fuzz_app.patch("/v1/corpora/cor_x")
    assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "DELETE"}


@pytest.mark.parametrize("method, path", _operations())
def test_app_answers_as_documented(fuzz_schema, method, path):
    """About 25 generated requests per operation, every schemathesis check, zero failures."""
    operation = fuzz_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(headers=FUZZ)
    check()
