"""A real herald with `auth = "hook"` asking this Django's connect view (a live server):
the browser's session cookie decides who listens."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings

from django_herald import publish

from .wsclient import close_code, next_text, open_stream

pytestmark = pytest.mark.django_db(transaction=True)


def config(live_server_url: str, refresh: str = "5m") -> str:
    return f"""
[api]
key = "test-api-key"

[[routes]]
path = "/message/{{user_id}}/stream/"
groups = ["user.{{user_id}}"]
auth = "hook"

[hook]
url = "{live_server_url}/herald/connect/"
cache_ttl = "0s"
refresh = "{refresh}"
"""


def session_cookie(user: User) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def test_own_stream_receives(live_server, start_herald) -> None:
    alice = User.objects.create_user("alice")
    herald = start_herald(config(live_server.url))
    ws = open_stream(f"ws://{herald.addr}/message/{alice.pk}/stream/", session_cookie(alice))
    with override_settings(HERALD_URL=herald.url):
        publish(f"user.{alice.pk}", text="hi alice")
    assert next_text(ws) == "hi alice"
    ws.close()


def test_another_users_stream_is_4503(live_server, start_herald) -> None:
    alice = User.objects.create_user("alice")
    herald = start_herald(config(live_server.url))
    ws = open_stream(f"ws://{herald.addr}/message/{alice.pk + 1}/stream/", session_cookie(alice))
    assert close_code(ws) == 4503


def test_no_session_is_4501(live_server, start_herald) -> None:
    herald = start_herald(config(live_server.url))
    ws = open_stream(f"ws://{herald.addr}/message/1/stream/")
    assert close_code(ws) == 4501


def test_logout_while_connected_closes_4003(live_server, start_herald) -> None:
    alice = User.objects.create_user("alice")
    herald = start_herald(config(live_server.url, refresh="1s"))
    client = Client()
    client.force_login(alice)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    ws = open_stream(f"ws://{herald.addr}/message/{alice.pk}/stream/", cookie)
    client.logout()
    assert close_code(ws, timeout=10) == 4003
