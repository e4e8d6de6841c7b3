"""Bearer-key auth: each key belongs to a tenant, and every resource to the tenant that made it."""
from __future__ import annotations

import ipaddress
import secrets

from fastapi import Request

from service.errors import ApiError

DEFAULT_TENANT = "default"


def tenant_of(request: Request) -> str:
    """FastAPI dependency: the caller's tenant (401 without a valid key when keys are configured)."""
    keys: dict[str, str] = request.app.state.keys
    if not keys:
        return DEFAULT_TENANT
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <key>'",
                       headers={"WWW-Authenticate": "Bearer"})
    for key, tenant in keys.items():
        if secrets.compare_digest(key.encode(), token.strip().encode()):
            return tenant
    raise ApiError(401, "unauthorized", "unknown API key", headers={"WWW-Authenticate": "Bearer"})


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_keys: list[str]) -> None:
    """With no API keys anyone who can reach the port is trusted, so only loopback may be bound."""
    if not api_keys and not is_loopback(host):
        raise SystemExit(
            f"refusing to listen on {host}: no API keys are configured. Set THRESHER_API_KEYS="
            "tenant:key[,…] or bind 127.0.0.1.")
