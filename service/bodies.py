"""Request bodies in, file bodies out: what bounds the service's memory and threads per request.

- A body is read chunk by chunk into storage (`spool`), never whole into memory, and stops at its
  limit (413). A Ray worker parses it (the service never decodes user bytes).
- At most `THRESHER_MAX_PARSE_TASKS` such parses run at once (`parse_slot`): an upload's parse
  task asks Ray for no CPU (so that a training holding the cores cannot hold it up), which would
  otherwise let 50 concurrent uploads start 50 worker processes. A request waits for a slot in the
  event loop, holding no thread, up to `THRESHER_PARSE_WAIT_S`, then answers 503 with Retry-After:
  its body is already in storage, so waiting costs a connection, and a bounded wait keeps a burst
  from becoming a queue that never drains.
- A download reads its files in batches of about 2 MB (storage.encode.bounded_batches), and Arrow
  allocates from jemalloc in the service (service/__init__.py says why).
- A download names its file in `Content-Disposition` as RFC 6266 says (`attachment`).
"""
from __future__ import annotations

import asyncio
import contextlib
import unicodedata
from urllib.parse import quote

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from service.errors import ApiError


class TooLarge(Exception):
    pass


def limited(receive, limit: int):
    """Wrap an ASGI receive so that a body over `limit` bytes stops the request (TooLarge)."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise TooLarge()
        return message
    return wrapped


def too_large(limit: int, what: str = "upload", why: str = "") -> ApiError:
    return ApiError(413, "payload_too_large", f"{what} exceeds the limit of {limit} bytes{why}",
                    {"limit_bytes": limit})


def check_declared(request: Request, limit: int, what: str = "upload", why: str = "") -> None:
    """A Content-Length over the limit is refused before a byte is read."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(limit, what, why)


async def spool(request: Request, store, parts: tuple, limit: int, what: str = "body", why: str = "") -> None:
    """Write the raw request body into storage at `parts`, at most `limit` bytes (else 413)."""
    check_declared(request, limit, what, why)
    body = Request(request.scope, limited(request.receive, limit))
    try:
        with store.open_output(*parts) as out:
            async for chunk in body.stream():
                await run_in_threadpool(out.write, chunk)
    except TooLarge:
        raise too_large(limit, what, why) from None
    except ClientDisconnect:
        raise ApiError(400, "incomplete_upload", "the client disconnected during the upload") from None


@contextlib.asynccontextmanager
async def parse_slot(s):
    """One of THRESHER_MAX_PARSE_TASKS slots for a parse task, waited for without a thread."""
    slots = getattr(s, "parse_slots", None)
    if slots is None:
        slots = s.parse_slots = asyncio.Semaphore(s.settings.max_parse_tasks)
    try:
        await asyncio.wait_for(slots.acquire(), timeout=s.settings.parse_wait_s)
    except asyncio.TimeoutError:
        raise ApiError(503, "busy", f"{s.settings.max_parse_tasks} uploads are being parsed "
                       f"(THRESHER_MAX_PARSE_TASKS) and none finished within {s.settings.parse_wait_s:g} s "
                       "(THRESHER_PARSE_WAIT_S): retry later", {"retry_after_s": 5},
                       headers={"Retry-After": "5"}) from None
    try:
        yield
    finally:
        slots.release()


def unsafe(c: str) -> bool:
    """A character that has no place in a file name or a header: controls (CR, LF, NUL, …),
    separators of lines or paragraphs, and the quote and backslash of a quoted-string."""
    return unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in '"\\'


def attachment(filename: str) -> str:
    """`Content-Disposition` for a download (RFC 6266): an ASCII `filename` with every other or
    unsafe character replaced by `_`, and the name itself as `filename*` (RFC 5987, UTF-8)."""
    name = "".join("_" if unsafe(c) else c for c in filename)
    fallback = "".join(c if " " <= c <= "~" else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
