"""The connect view's decisions, through Django's test client (real SQLite, sessions)."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db


def ask(user_id: str, cookie: str | None = None) -> str:
    body = {
        "path": f"/message/{user_id}/stream/",
        "route": "/message/{user_id}/stream/",
        "params": {"user_id": user_id},
        "groups": [f"user.{user_id}"],
        "transport": "websocket",
        "headers": {"cookie": cookie} if cookie else {},
        "client_ip": "127.0.0.1",
        "origin": "http://testserver",
    }
    return json.dumps(body)


def post(client: Client, body: str):
    return client.post("/herald/connect/", body, content_type="application/json")


@pytest.fixture
def alice() -> User:
    return User.objects.create_user("alice", password="pw-alice-123")


def test_own_stream_is_allowed_with_sub(client: Client, alice: User) -> None:
    client.force_login(alice)
    response = post(client, ask(str(alice.pk)))
    assert response.status_code == 200
    assert response.json() == {"allow": True, "sub": str(alice.pk)}


def test_another_users_stream_is_403(client: Client, alice: User) -> None:
    client.force_login(alice)
    assert post(client, ask(str(alice.pk + 1))).status_code == 403


def test_anonymous_is_401(client: Client, alice: User) -> None:
    response = post(client, ask(str(alice.pk)))
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


def test_session_from_the_forwarded_cookie_alone(alice: User) -> None:
    logged_in = Client()
    logged_in.force_login(alice)
    session = logged_in.cookies["sessionid"].value
    # A request without cookies of its own: the JSON's forwarded cookie decides.
    response = post(Client(), ask(str(alice.pk), cookie=f"sessionid={session}"))
    assert response.status_code == 200
    assert response.json()["sub"] == str(alice.pk)


def test_logged_out_session_is_401(alice: User) -> None:
    client = Client()
    client.force_login(alice)
    session = client.cookies["sessionid"].value
    client.logout()
    response = post(Client(), ask(str(alice.pk), cookie=f"sessionid={session}"))
    assert response.status_code == 401


@override_settings(HERALD_CONNECT_RULE="tests.rules.team_rule")
def test_a_project_rule_decides(client: Client, alice: User) -> None:
    alice.is_staff = True
    alice.save()
    client.force_login(alice)
    response = post(client, ask("999"))
    assert response.status_code == 200
    assert response.json()["groups"] == ["user.999", "team.7"]


def test_bad_requests_get_json_errors(client: Client) -> None:
    response = post(client, "not json")
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"
    assert post(client, "[1]").status_code == 400
    assert client.get("/herald/connect/").status_code == 405
