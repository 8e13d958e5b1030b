"""The webhook view: herald's ``group.occupied`` / ``group.vacated`` events as signals.

herald signs each request with ``X-Herald-Signature: t=<unix>,v1=<hex>``, the hex being
the HMAC-SHA256, keyed with ``[webhooks] secret``, of ``"<t>.<raw body>"``. The view
checks it in constant time, refuses timestamps further than
``HERALD_WEBHOOK_TOLERANCE`` seconds from now (403: forged, or replayed late), and
ignores an event id it already handled within that window (a replay, or a retry whose
answer was lost: 200, no second signal).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from . import signals
from .conf import setting

MAX_BODY_BYTES = 64 * 1024
HEADER = "HTTP_X_HERALD_SIGNATURE"


def _refuse(status: int, error: str) -> JsonResponse:
    return JsonResponse({"error": error}, status=status)


def verify(secret: bytes, header: str, body: bytes, now: float, tolerance: float) -> bool:
    """Whether ``header`` is a valid signature of ``body`` made within ``tolerance`` s."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts.get("t", ""))
    except ValueError:
        return False
    given = parts.get("v1", "")
    expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    # Compared before the window check, and in constant time either way.
    valid = hmac.compare_digest(expected, given)
    return valid and abs(now - t) <= tolerance


@csrf_exempt
@require_POST
def webhook(request: HttpRequest) -> HttpResponse:
    secret = setting("HERALD_WEBHOOK_SECRET")
    if not secret:
        raise ImproperlyConfigured("HERALD_WEBHOOK_SECRET is needed for the webhook view")
    body = request.body
    if len(body) > MAX_BODY_BYTES:
        return _refuse(413, "too_large")
    tolerance = float(setting("HERALD_WEBHOOK_TOLERANCE"))
    header = request.META.get(HEADER, "")
    if not verify(secret.encode(), header, body, time.time(), tolerance):
        return _refuse(403, "bad_signature")
    try:
        event = json.loads(body)
        kind, group, event_id = event["event"], event["group"], event["id"]
    except (ValueError, KeyError, TypeError):
        return _refuse(400, "bad_event")
    if not isinstance(group, str) or not isinstance(event_id, str):
        return _refuse(400, "bad_event")
    # Once per event id within the window: a replay or a repeated retry signals nothing.
    if not cache.add(f"django_herald:webhook:{event_id}", 1, timeout=int(tolerance) * 2 + 1):
        return HttpResponse(status=200)
    user_id = group[len("user."):] if group.startswith("user.") else None
    if kind == "group.occupied":
        signals.group_occupied.send(sender=webhook, group=group, event=event)
        if user_id:
            signals.user_online.send(sender=webhook, group=group, event=event, user_id=user_id)
    elif kind == "group.vacated":
        signals.group_vacated.send(sender=webhook, group=group, event=event)
        if user_id:
            signals.user_offline.send(sender=webhook, group=group, event=event, user_id=user_id)
    # Unknown kinds (a newer herald) are acknowledged and ignored.
    return HttpResponse(status=200)
