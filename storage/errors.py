"""The one error type below the service: a code, a message that says what to fix, and details
that locate the problem (`line`, `field`, `id`, …). Only service/errors.py turns codes into HTTP
statuses; nothing below it knows HTTP."""
from __future__ import annotations


def _rebuild(cls, code: str, message: str, details: dict) -> "DomainError":
    error = cls.__new__(cls)
    DomainError.__init__(error, code, message, details)
    return error


class DomainError(Exception):
    def __init__(self, code: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details or {}

    def __reduce__(self):
        # Errors cross process boundaries (a Ray task raises, the driver catches): pickle the
        # fields, whatever the subclass's constructor takes.
        return _rebuild, (type(self), self.code, self.message, self.details)

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "details": self.details}


def redact(text: str, paths) -> str:
    """`text` with every one of the server's own `paths` (its home, its store) replaced by
    `<server>`: messages reach tenants, and where the server keeps its files is none of theirs."""
    for path in sorted((p.rstrip("/") for p in paths if p and p.rstrip("/")), key=len, reverse=True):
        text = text.replace(path, "<server>")
    return text
