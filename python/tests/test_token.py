"""token() mints what a real herald accepts on an `auth = "token"` route."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.test import override_settings

from django_herald import publish, token

from .wsclient import close_code, next_text, open_stream

pytestmark = pytest.mark.django_db


def config() -> str:
    return f"""
[api]
key = "test-api-key"

[auth]
secret = "{settings.HERALD_SECRET}"

[[routes]]
path = "/message/{{user_id}}/stream/"
groups = ["user.{{user_id}}"]
auth = "token"
"""


def test_token_opens_the_users_stream(start_herald) -> None:
    user = User.objects.create_user("bob")
    herald = start_herald(config())
    ws = open_stream(f"ws://{herald.addr}/message/{user.pk}/stream/?token={token(user)}")
    with override_settings(HERALD_URL=herald.url):
        publish(f"user.{user.pk}", text="for bob")
    assert next_text(ws) == "for bob"
    ws.close()


def test_token_of_another_user_is_refused_4503(start_herald) -> None:
    user = User.objects.create_user("bob")
    herald = start_herald(config())
    ws = open_stream(f"ws://{herald.addr}/message/{user.pk + 1}/stream/?token={token(user)}")
    assert close_code(ws) == 4503


def test_token_with_the_wrong_secret_is_refused_4501(start_herald) -> None:
    user = User.objects.create_user("bob")
    herald = start_herald(config())
    bad = token(user, secret="another-secret-another-secret-123456")
    ws = open_stream(f"ws://{herald.addr}/message/{user.pk}/stream/?token={bad}")
    assert close_code(ws) == 4501


def test_expired_token_is_refused(start_herald) -> None:
    user = User.objects.create_user("bob")
    herald = start_herald(config())
    ws = open_stream(f"ws://{herald.addr}/message/{user.pk}/stream/?token={token(user, ttl=-10)}")
    assert close_code(ws) == 4003
