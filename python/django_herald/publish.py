"""Publishing through herald's HTTP API, with retries that reuse one idempotency key.

Every call carries an ``idempotency_key`` (a random one when none is given), and every
retry sends the same key: herald publishes it once however often the request is retried
within its ``publish.idempotency_window`` (default 5 min), on any node.

Retried: connection errors, timeouts, 429 and 5xx. Not retried: other 4xx (the request
itself is wrong) — they raise :class:`HeraldError` at once.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from .conf import setting

_MISSING = object()


class HeraldError(Exception):
    """herald refused the publish, or could not be reached after every attempt."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        #: The HTTP status of the last answer (None when herald was unreachable).
        self.status = status
        #: herald's error code (``"invalid_group"``, ``"layer_unavailable"``, ...).
        self.code = code


def _body(
    group: str, data: Any, text: str | None, bytes_b64: str | None, key: str
) -> bytes:
    body: dict[str, Any] = {"group": group, "idempotency_key": key}
    given = [data is not _MISSING, text is not None, bytes_b64 is not None]
    if sum(given) != 1:
        raise ValueError("give exactly one of data=, text= or bytes_b64=")
    if data is not _MISSING:
        body["data"] = data
    elif text is not None:
        body["text"] = text
    else:
        body["bytes"] = bytes_b64
    return json.dumps(body).encode()


def _attempt(url: str, body: bytes, timeout: float) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    key = setting("HERALD_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            answer = json.loads(e.read() or b"{}")
        except ValueError:
            answer = {}
        return e.code, answer if isinstance(answer, dict) else {}


def publish(
    group: str,
    data: Any = _MISSING,
    *,
    text: str | None = None,
    bytes_b64: str | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Publishes one message to ``group``: ``data`` (any JSON value, sent as a text
    frame), or ``text``, or base64 ``bytes_b64``. Returns herald's answer,
    ``{"offset": 18, "epoch": "Xy3"}`` (the first offset again on a retried key)."""
    key = idempotency_key or uuid.uuid4().hex
    body = _body(group, data, text, bytes_b64, key)
    url = setting("HERALD_URL").rstrip("/") + "/api/publish"
    attempts = max(1, int(setting("HERALD_PUBLISH_ATTEMPTS")))
    timeout = float(setting("HERALD_PUBLISH_TIMEOUT"))
    backoff = float(setting("HERALD_PUBLISH_BACKOFF"))
    last: HeraldError | None = None
    for attempt in range(attempts):
        if attempt:
            # Exponential backoff with jitter, so many workers do not retry in step.
            time.sleep(backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))
        try:
            status, answer = _attempt(url, body, timeout)
        except (urllib.error.URLError, OSError, ValueError) as e:
            last = HeraldError(f"herald unreachable at {url}: {e}")
            continue
        if status == 200:
            return answer
        error = HeraldError(
            f"herald answered {status}: {answer.get('message', '')}",
            status=status,
            code=answer.get("error"),
        )
        if status == 429 or status >= 500:
            last = error
            continue
        raise error
    assert last is not None
    raise last


async def apublish(
    group: str,
    data: Any = _MISSING,
    *,
    text: str | None = None,
    bytes_b64: str | None = None,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """:func:`publish` for async views and consumers (runs it in a worker thread)."""
    return await asyncio.to_thread(
        publish,
        group,
        data,
        text=text,
        bytes_b64=bytes_b64,
        idempotency_key=idempotency_key,
    )
