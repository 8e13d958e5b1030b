"""Every django_herald setting, with its default, in one place.

Read through :func:`setting` at call time, so ``override_settings`` in tests works.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # Base URL of herald's HTTP API (the publish endpoint is <url>/api/publish).
    "HERALD_URL": "http://127.0.0.1:8000",
    # The API key herald's [api] key/keys expects (Authorization: Bearer ...); None = open API.
    "HERALD_API_KEY": None,
    # The HS256 secret of herald's [auth] secret, for django_herald.token().
    "HERALD_SECRET": None,
    # Dotted path of a callable deciding connections instead of the default rule.
    "HERALD_CONNECT_RULE": None,
    # Publish: attempts in total (the first one plus retries), seconds per attempt, first backoff.
    "HERALD_PUBLISH_ATTEMPTS": 4,
    "HERALD_PUBLISH_TIMEOUT": 5.0,
    "HERALD_PUBLISH_BACKOFF": 0.2,
    # Tokens: default lifetime in seconds.
    "HERALD_TOKEN_TTL": 3600,
    # The channel prefix herald's Django bridge uses ([django] channel_prefix).
    "HERALD_DJANGO_CHANNEL_PREFIX": "herald",
    # Seconds between herald's membership refreshes ([django] membership_refresh).
    "HERALD_DJANGO_MEMBERSHIP_REFRESH": 60,
    # herald's [webhooks] secret, for the webhook view (None: the view refuses to run).
    "HERALD_WEBHOOK_SECRET": None,
    # Seconds a signature's timestamp may be from now; older ones are replays (403).
    "HERALD_WEBHOOK_TOLERANCE": 300,
}


def setting(name: str) -> Any:
    """The project's value of ``name``, else its default."""
    return getattr(settings, name, DEFAULTS[name])
