"""The webhook view: signatures (forged, replayed), signals, and a real herald sending
``group.occupied`` / ``group.vacated`` to this Django (a live server)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid

import pytest
from django.test import Client

from django_herald import signals

from .wsclient import open_stream

SECRET = "django-herald-webhook-secret"


def signed(body: bytes, t: int | None = None, secret: str = SECRET) -> str:
    t = int(time.time()) if t is None else t
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def event(kind: str, group: str = "user.42") -> bytes:
    body = {"id": uuid.uuid4().hex, "event": kind, "group": group, "subs": ["42"], "node": "n1", "time": time.time()}
    return json.dumps(body).encode()


def post(body: bytes, signature: str | None):
    headers = {"HTTP_X_HERALD_SIGNATURE": signature} if signature is not None else {}
    return Client().post("/herald/webhook/", body, content_type="application/json", **headers)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def connect(self) -> None:
        for name in ("group_occupied", "group_vacated", "user_online", "user_offline"):
            handler = self._handler(name)
            setattr(self, f"_h_{name}", handler)  # keep a strong reference
            getattr(signals, name).connect(handler, weak=False, dispatch_uid=f"test-{name}")

    def disconnect(self) -> None:
        for name in ("group_occupied", "group_vacated", "user_online", "user_offline"):
            getattr(signals, name).disconnect(dispatch_uid=f"test-{name}")

    def _handler(self, name: str):
        def handler(sender, **kwargs):
            self.calls.append((name, kwargs))

        return handler

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def recorder():
    r = Recorder()
    r.connect()
    yield r
    r.disconnect()


def test_a_signed_event_becomes_signals(recorder) -> None:
    body = event("group.occupied")
    assert post(body, signed(body)).status_code == 200
    assert recorder.names() == ["group_occupied", "user_online"]
    assert recorder.calls[1][1]["user_id"] == "42"
    body = event("group.vacated", group="room.7")
    assert post(body, signed(body)).status_code == 200
    assert recorder.names()[2:] == ["group_vacated"], "no user_offline for a non-user group"


def test_forged_signatures_are_refused(recorder) -> None:
    body = event("group.occupied")
    assert post(body, signed(body, secret="not-the-secret-at-all")).status_code == 403
    assert post(body, None).status_code == 403
    assert post(body, "t=abc,v1=00").status_code == 403
    tampered = body.replace(b'"user.42"', b'"user.43"')
    assert post(tampered, signed(body)).status_code == 403
    assert recorder.names() == []


def test_replays_are_refused_or_ignored(recorder) -> None:
    body = event("group.vacated")
    old = int(time.time()) - 3600
    assert post(body, signed(body, t=old)).status_code == 403, "outside the window"
    future = int(time.time()) + 3600
    assert post(body, signed(body, t=future)).status_code == 403
    signature = signed(body)
    assert post(body, signature).status_code == 200
    assert post(body, signature).status_code == 200, "acknowledged"
    assert recorder.names() == ["group_vacated", "user_offline"], "signalled once"


def test_malformed_events_are_400(recorder) -> None:
    for body in (b"not json", b'{"event": "group.occupied"}', b"[]"):
        assert post(body, signed(body)).status_code == 400
    assert recorder.names() == []


def wait_for(recorder: Recorder, n: int, timeout: float) -> list[str]:
    until = time.monotonic() + timeout
    while len(recorder.calls) < n:
        assert time.monotonic() < until, f"signals so far: {recorder.names()}"
        time.sleep(0.02)
    return recorder.names()


@pytest.mark.django_db(transaction=True)
def test_a_real_herald_reports_a_user_online_then_offline(live_server, start_herald, recorder) -> None:
    herald = start_herald(
        f"""
[presence]
refresh = "200ms"

[webhooks]
url = "{live_server.url}/herald/webhook/"
secret = "{SECRET}"
vacated_delay = "300ms"
"""
    )
    ws = open_stream(f"ws://{herald.addr}/message/42/stream/")
    assert wait_for(recorder, 2, 5) == ["group_occupied", "user_online"]
    assert recorder.calls[1][1]["user_id"] == "42"
    ws.close()
    assert wait_for(recorder, 4, 5)[2:] == ["group_vacated", "user_offline"]
