"""Connection tokens for herald routes with ``auth = "token"``: HS256 JWTs, the same as
``herald token`` mints, signed with the standard library only."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from .conf import setting


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(
    user: Any,
    groups: list[str] | None = None,
    ttl: int | None = None,
    secret: str | None = None,
) -> str:
    """A token for ``user`` (its ``pk`` is the ``sub``), valid for ``ttl`` seconds
    (default ``HERALD_TOKEN_TTL``). ``groups`` (patterns like ``"team.*"``) replaces
    the default grant, the route's groups for this user. The secret is
    ``HERALD_SECRET``: herald's ``[auth] secret``."""
    key = secret or setting("HERALD_SECRET")
    if not key or len(key.encode()) < 32:
        raise ValueError("HERALD_SECRET must be set to herald's [auth] secret (32+ bytes)")
    sub = str(getattr(user, "pk", user))
    lifetime = int(ttl if ttl is not None else setting("HERALD_TOKEN_TTL"))
    claims: dict[str, Any] = {"sub": sub, "exp": int(time.time()) + lifetime}
    if groups is not None:
        claims["groups"] = list(groups)
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = hmac.new(key.encode(), signing_input, hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"
