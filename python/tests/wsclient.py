"""A WebSocket client for the tests (websockets' sync client): receive, or the close code."""

from __future__ import annotations

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect


def open_stream(url: str, cookie: str | None = None) -> ClientConnection:
    headers = {"Cookie": cookie} if cookie else None
    return connect(url, additional_headers=headers, open_timeout=5)


def close_code(ws: ClientConnection, timeout: float = 5) -> int | None:
    """Waits (≤ timeout) for the server's close; returns its code (frames before it fail)."""
    try:
        message = ws.recv(timeout=timeout)
    except ConnectionClosed as e:
        return e.rcvd.code if e.rcvd else None
    raise AssertionError(f"expected a close, received {message!r}")


def next_text(ws: ClientConnection, timeout: float = 5) -> str:
    message = ws.recv(timeout=timeout)
    assert isinstance(message, str), message
    return message
