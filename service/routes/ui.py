"""The dashboard: static HTML, ES modules, CSS and a vendored chart library, served at /ui.

Every asset ships inside the package (`service/ui/`), so the dashboard works offline and from an
installed wheel. The page itself is public; everything it shows comes from the API with the
caller's key.
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import PurePosixPath

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from service.errors import ApiError

router = APIRouter(include_in_schema=False)
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
               ".md": "text/markdown; charset=utf-8"}
SAFE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


def asset(path: str) -> tuple[bytes, str]:
    """The bytes and media type of a file under service/ui (404 for anything else)."""
    parts = path.split("/")
    if not all(SAFE.match(p) for p in parts):  # no "..", no absolute path, no hidden file
        raise ApiError(404, "not_found", f"no dashboard file {path!r}")
    media = MEDIA_TYPES.get(PurePosixPath(path).suffix)
    node = resources.files("service").joinpath("ui", *parts)
    if media is None or not node.is_file():
        raise ApiError(404, "not_found", f"no dashboard file {path!r}")
    return node.read_bytes(), media


@router.get("/")
def root():
    """A browser pointed at the service lands on the dashboard. Relative, so that it holds behind
    a proxy that serves Thresher under a path prefix."""
    return RedirectResponse("ui/", status_code=307)


@router.get("/ui")
def ui_root():
    return RedirectResponse("/ui/", status_code=307)


@router.get("/ui/{path:path}")
def ui_file(path: str):
    data, media = asset(path or "index.html")
    # Assets change with the package version; a reload must see a new install at once.
    return Response(data, media_type=media, headers={"Cache-Control": "no-cache"})
