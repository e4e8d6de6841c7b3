"""The one error format of the API: {"error": {"code", "message", "details"}}. Never a 500 for bad input."""
from __future__ import annotations

import difflib
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from storage.errors import DomainError, redact
from storage.fs import storage_error

log = logging.getLogger("thresher.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict | None = None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, details or {}, headers


# The HTTP status of each domain error code (storage/, workers/); any other code is a 400.
STATUS_BY_CODE = {
    "forbidden": 403, "forbidden_statement": 403, "forbidden_uri": 403,
    "not_found": 404, "file_not_found": 404,
    "query_timeout": 408,
    "result_too_large": 413, "payload_too_large": 413,
    "dest_not_empty": 409, "epoch_not_ready": 409, "losses_missing": 409, "wrong_epoch": 409,
    "epoch_not_started": 409,
    "decompressed_too_large": 413, "document_too_large": 413,
    "unknown_format": 415,
    "duplicate_id": 422, "missing_field": 422, "wrong_type": 422, "inconsistent_ids": 422,
    "too_many_sources": 422, "validation_error": 422, "limit_exceeded": 422, "non_finite_loss": 422, "unknown_doc_id": 422,
    "bad_uri": 422, "bad_glob": 422, "uri_option_not_allowed": 422, "too_many_files": 422, "listing_timeout": 422,
    "not_a_file": 422, "bad_keep": 422,
    "storage_unavailable": 503, "insufficient_storage": 507,
}


def from_domain(e: DomainError) -> ApiError:
    return ApiError(STATUS_BY_CODE.get(e.code, 400), e.code, e.message, e.details)


def invalid_body(e) -> ApiError:
    """A pydantic ValidationError of a body parsed by hand (non-JSON alternatives) as a 422."""
    first = headline([describe(err, list(err["loc"])) for err in e.errors()])
    return ApiError(422, "validation_error", first["text"], {"field": first["field"]})


def describe(err: dict, loc: list, body=None, tags: dict | None = None) -> dict:
    """One pydantic error in plain words: {"field", "message", "type", "text"} where `text` is
    the sentence to headline ("spec.select: required field missing", "unknown field 'selection'
    in spec; did you mean 'select'?"). `body` ({"body": the request body}) shows the keys of an
    object whose discriminator is missing; `tags` lists a discriminator's values by its name."""
    kind, ctx, msg = err["type"], err.get("ctx") or {}, err["msg"]
    parent = field_path(loc)
    where = parent or "the body"
    if kind == "unknown_field":
        field = f"{parent}.{ctx['field']}" if parent else ctx["field"]
        text = f"unknown field {ctx['field']!r} in {where}{ctx['hint']}"
        return {"field": field, "message": text, "type": kind, "text": text}
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        name = ctx.get("discriminator", "").strip("'") or "kind"
        field = f"{parent}.{name}" if parent else name
        allowed = [t.strip().strip("'") for t in ctx.get("expected_tags", "").split(",") if t.strip()]
        allowed = (tags or {}).get(name) or allowed
        if kind == "union_tag_invalid":
            msg = f"unknown {name} {ctx.get('tag')!r} in {where}"
            close = difflib.get_close_matches(str(ctx.get("tag")), allowed, n=1, cutoff=0.6)
            msg += f"; did you mean {close[0]!r}?" if close else ""
        else:
            msg = f"missing field {name!r} in {where}"
            obj = _at(body, loc)
            if isinstance(obj, dict) and obj:
                msg += f", which has {', '.join(repr(str(k)) for k in obj)}"
        if allowed:
            msg += f" ({name} is one of {', '.join(allowed)})"
        return {"field": field, "message": msg, "type": kind, "text": msg}
    msg = {"missing": "required field missing", "extra_forbidden": "unknown field"}.get(kind, msg)
    if kind == "value_error":   # a validator's own sentence, without pydantic's "Value error, "
        msg = msg.removeprefix("Value error, ")
    return {"field": parent, "message": msg, "type": kind, "text": f"{parent}: {msg}" if parent else msg}


def _at(value, loc: list):
    """The value at pydantic's `loc` inside `value`, or None."""
    for part in loc:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def headline(errors: list[dict]) -> dict:
    """The error to headline: an unknown field before anything else (a misspelt field also leaves a
    required one missing); then, as pydantic reports one error per alternative of a union, the
    deepest path."""
    return max(errors, key=lambda e: (e["type"] == "unknown_field", len(e["field"].split("."))))


def not_found(kind: str, id_: str) -> ApiError:
    return ApiError(404, "not_found", f"{kind} {id_!r} does not exist", {"id": id_})


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict = {}


class ErrorResponse(BaseModel):
    error: ErrorBody


# Every API operation may answer these (403: a path or statement not allowed, 408: a query's time
# limit, 413: an upload or result over its limit, 503: the server's storage does not answer or has
# no bucket, 507: the server's storage is full).
ERROR_RESPONSES = {s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 408, 409, 413, 415, 422, 500, 503, 507)}


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


def install(app: FastAPI, kind_tags: set[str] = frozenset(), server_paths: tuple[str, ...] = (),
            tags: dict[str, list[str]] | None = None) -> None:
    """The error handlers; `server_paths` (home, store) never appear in a message or its details;
    `tags` lists the values of each discriminator (`{"kind": [...]}`) for a request that lacks one."""
    def hide(value):
        return redact(value, server_paths) if isinstance(value, str) else value

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError):
        details = {k: hide(v) for k, v in exc.details.items()}
        return JSONResponse(_body(exc.code, hide(exc.message), details), status_code=exc.status, headers=exc.headers)

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
            errors.append(describe(e, loc, {"body": exc.body}, tags))
        first = headline(errors) if errors else {"field": "", "text": "invalid request"}
        details = [{k: e[k] for k in ("field", "message", "type")} for e in errors]
        return JSONResponse(_body("validation_error", first["text"], {"field": first["field"], "errors": details}),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code, "http_error")
        headers = exc.headers
        if exc.status_code == 405:  # Starlette names only the first matching route's methods
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return JSONResponse(_body(code, str(exc.detail), {}), status_code=exc.status_code, headers=headers)

    # Unhandled errors are answered here, below Starlette's ServerErrorMiddleware: that one sends
    # its 500 and then re-raises, which makes the server drop the client's keep-alive connection.
    app.add_middleware(CatchAll)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at the request's path (asked of the app's routes method by
    method, so routers nested by include_router answer too)."""
    return [m for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
            if any(route.matches({**request.scope, "method": m})[0] == Match.FULL for route in request.app.routes)]


def unhandled(exc: BaseException) -> JSONResponse:
    """The answer to an exception nothing else handled: a failure of the server's storage is 507
    (full) or 503 (not answering, no bucket), anything else a 500."""
    failed = storage_error(exc)
    if failed is not None:
        log.error("storage failed: %s", exc)
        return JSONResponse(_body(failed.code, failed.message, failed.details), status_code=STATUS_BY_CODE[failed.code])
    log.error("unhandled error", exc_info=exc)
    return JSONResponse(_body("internal_error", "the server failed; this is a bug, please report it", {}),
                        status_code=500)


class CatchAll:
    """ASGI middleware: an exception from the app becomes the error envelope (when no response has
    started yet) and is not re-raised, so the connection stays open for the next request."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)
        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if started:  # a streamed body failed half-way: all that can be done is to end it
                log.error("error while streaming a response", exc_info=exc)
                raise
            await unhandled(exc)(scope, receive, send)
