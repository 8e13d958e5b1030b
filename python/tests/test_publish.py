"""publish/apublish against a real herald: answers, retries reusing the idempotency key,
and errors."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
from django.test import override_settings

from django_herald import HeraldError, apublish, publish

from .wsclient import next_text, open_stream

CONFIG = """
[api]
key = "test-api-key"
"""


def test_publish_answers_offset_and_is_received(start_herald) -> None:
    herald = start_herald(CONFIG)
    ws = open_stream(f"ws://{herald.addr}/message/42/stream/")
    with override_settings(HERALD_URL=herald.url):
        answer = publish("user.42", {"kind": "hello", "n": 1})
    assert answer["offset"] == 1
    assert json.loads(next_text(ws)) == {"kind": "hello", "n": 1}
    ws.close()


def test_the_same_key_publishes_once(start_herald) -> None:
    herald = start_herald(CONFIG)
    ws = open_stream(f"ws://{herald.addr}/message/42/stream/")
    with override_settings(HERALD_URL=herald.url):
        first = publish("user.42", text="once", idempotency_key="order-17")
        again = publish("user.42", text="once", idempotency_key="order-17")
        marker = publish("user.42", text="marker")
    assert again == first
    assert marker["offset"] == first["offset"] + 1
    assert next_text(ws) == "once"
    assert next_text(ws) == "marker"
    ws.close()


def test_async_publish(start_herald) -> None:
    herald = start_herald(CONFIG)
    with override_settings(HERALD_URL=herald.url):
        answer = asyncio.run(apublish("user.1", text="async"))
    assert answer["offset"] == 1


def test_wrong_api_key_raises_without_retry(start_herald) -> None:
    herald = start_herald(CONFIG)
    with override_settings(HERALD_URL=herald.url, HERALD_API_KEY="wrong"):
        with pytest.raises(HeraldError) as e:
            publish("user.42", text="x")
    assert e.value.status == 401
    assert e.value.code == "unauthorized"


def test_invalid_group_raises(start_herald) -> None:
    herald = start_herald(CONFIG)
    with override_settings(HERALD_URL=herald.url):
        with pytest.raises(HeraldError) as e:
            publish("not a group", text="x")
    assert e.value.status == 400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_retries_until_herald_is_up(start_herald) -> None:
    port = free_port()
    starter = threading.Timer(0.5, lambda: start_herald(CONFIG, f"127.0.0.1:{port}"))
    starter.start()
    try:
        with override_settings(
            HERALD_URL=f"http://127.0.0.1:{port}",
            HERALD_PUBLISH_ATTEMPTS=8,
            HERALD_PUBLISH_BACKOFF=0.1,
        ):
            answer = publish("user.42", text="late")
    finally:
        starter.join()
    assert answer["offset"] == 1


class LosingProxy:
    """Forwards publish requests to herald but drops herald's first answer (the
    connection closes without a response), as a network failure after the publish would."""

    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.forwarded = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                request = read_request(conn)
                with socket.create_connection(self.target, timeout=5) as upstream:
                    upstream.sendall(request)
                    response = b""
                    while chunk := upstream.recv(65536):
                        response += chunk
                self.forwarded += 1
                if self.forwarded > 1:
                    conn.sendall(response)

    def close(self) -> None:
        self.listener.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(body) < length:
        body += conn.recv(65536)
    # Ask herald to close after answering, so the proxy reads to the end.
    head = head.replace(b"Connection: close\r\n", b"") + b"\r\nConnection: close"
    return head + b"\r\n\r\n" + body


def test_a_lost_answer_is_retried_with_the_same_key(start_herald) -> None:
    herald = start_herald(CONFIG)
    proxy = LosingProxy(herald.addr)
    ws = open_stream(f"ws://{herald.addr}/message/42/stream/")
    try:
        with override_settings(HERALD_URL=f"http://{proxy.addr}"):
            answer = publish("user.42", text="exactly once")
    finally:
        proxy.close()
    assert proxy.forwarded == 2, "herald saw the publish and its retry"
    assert answer["offset"] == 1, "the retry answered the first offset"
    with override_settings(HERALD_URL=herald.url):
        publish("user.42", text="marker")
    assert next_text(ws) == "exactly once"
    assert next_text(ws) == "marker"
    ws.close()
