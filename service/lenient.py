"""Accept a JSON body sent without `content-type: application/json`.

`curl -d '{…}'` labels its body application/x-www-form-urlencoded, and other clients send none; no
endpoint takes form-encoded data, so those bodies are read as JSON (file uploads to /v1/corpora,
which read the raw body, are left alone)."""
from __future__ import annotations

RELABEL = {b"", b"application/x-www-form-urlencoded", b"text/plain"}


class JsonByDefault:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH") \
                and not scope["path"].startswith("/v1/corpora"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            ctype = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
            if ctype in RELABEL:
                scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
