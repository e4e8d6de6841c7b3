"""The one error format of the API: {"error": {"code", "message", "details"}}. Never a 500 for bad input."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from storage.errors import DomainError

log = logging.getLogger("thresher.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict | None = None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, details or {}, headers


# The HTTP status of each domain error code (storage/, workers/); any other code is a 400.
STATUS_BY_CODE = {
    "forbidden": 403, "forbidden_statement": 403,
    "not_found": 404, "file_not_found": 404,
    "query_timeout": 408,
    "dest_not_empty": 409, "epoch_not_ready": 409, "losses_missing": 409, "wrong_epoch": 409,
    "epoch_not_started": 409,
    "decompressed_too_large": 413, "document_too_large": 413,
    "unknown_format": 415,
    "duplicate_id": 422, "missing_field": 422, "wrong_type": 422, "inconsistent_ids": 422,
    "too_many_sources": 422, "validation_error": 422, "non_finite_loss": 422, "unknown_doc_id": 422,
}


def from_domain(e: DomainError) -> ApiError:
    return ApiError(STATUS_BY_CODE.get(e.code, 400), e.code, e.message, e.details)


def invalid_body(e) -> ApiError:
    """A pydantic ValidationError of a body parsed by hand (non-JSON alternatives) as a 422."""
    err = e.errors()[0]
    field = ".".join(str(p) for p in err["loc"])
    return ApiError(422, "validation_error", f"{field}: {err['msg']}", {"field": field})


def not_found(kind: str, id_: str) -> ApiError:
    return ApiError(404, "not_found", f"{kind} {id_!r} does not exist", {"id": id_})


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict = {}


class ErrorResponse(BaseModel):
    error: ErrorBody


ERROR_RESPONSES = {s: {"model": ErrorResponse} for s in (400, 401, 404, 409, 413, 415, 422)}


def _body(code: str, message: str, details: dict) -> dict:
    return {"error": {"code": code, "message": message, "details": details}}


def field_path(loc) -> str:
    """'spec.select.fraction' from pydantic's loc, without the 'body' prefix or union tags."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    # A discriminated union adds the tag (the job kind) as a path element after the root.
    parts = [p for p in parts if not p.startswith("function-") and "[" not in p]
    return ".".join(parts)


def install(app: FastAPI, kind_tags: set[str] = frozenset()) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        return JSONResponse(_body(exc.code, exc.message, exc.details), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(DomainError)
    async def _domain_error(request: Request, exc: DomainError):
        return await _api_error(request, from_domain(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        errors = []
        for e in exc.errors():
            if e["type"] == "json_invalid":   # loc is ("body", <character offset>): not a field
                pos = e["loc"][-1] if len(e["loc"]) > 1 else "?"
                reason = (e.get("ctx") or {}).get("error", "")
                return JSONResponse(_body("malformed_json", f"the request body is not valid JSON (character "
                                          f"{pos}: {reason})", {"field": "body", "position": pos}), status_code=422)
            loc = [p for i, p in enumerate(e["loc"]) if not (i == 1 and p in kind_tags)]
            if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
                loc.append(e.get("ctx", {}).get("discriminator", "").strip("'") or "kind")
            errors.append({"field": field_path(loc), "message": e["msg"], "type": e["type"]})
        # With unions pydantic reports one error per alternative: the deepest path is the one meant.
        first = max(errors, key=lambda e: len(e["field"].split("."))) if errors else \
            {"field": "", "message": "invalid request"}
        where = f"{first['field']}: " if first["field"] else ""
        return JSONResponse(_body("validation_error", f"{where}{first['message']}",
                                  {"field": first["field"], "errors": errors}), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code, "http_error")
        return JSONResponse(_body(code, str(exc.detail), {}), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse(_body("internal_error", "the server failed; this is a bug, please report it", {}),
                            status_code=500)
