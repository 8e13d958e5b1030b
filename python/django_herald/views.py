"""The connect hook view (herald DESIGN.md §11): may this browser listen on this path?

herald POSTs JSON describing the upgrade and forwards the browser's ``Cookie`` (and
``Authorization``) both as request headers and inside the JSON. Django's own session and
authentication middleware therefore see the browser's session: ``request.user`` is the
user logged in on that browser. The answer:

- 200 ``{"allow": true, "sub": "<pk>"}`` — allowed (a rule may add ``groups``, ``expires_in``)
- 401 — nobody is logged in
- 403 — logged in, but not allowed here (another user's stream)
"""

from __future__ import annotations

import json
from importlib import import_module
from typing import Any, Callable

from django.conf import settings
from django.contrib.auth import get_user
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.http.cookie import parse_cookie
from django.utils.module_loading import import_string
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .conf import setting

#: A rule: ``rule(request, user, ask) -> bool | dict``. A dict is the answer (it must
#: hold ``"allow"``); ``True``/``False`` allow or refuse.
Rule = Callable[[HttpRequest, Any, dict[str, Any]], "bool | dict[str, Any]"]

MAX_BODY_BYTES = 64 * 1024


def default_rule(request: HttpRequest, user: Any, ask: dict[str, Any]) -> bool:
    """Authenticated, and the route's ``user_id`` is this user's primary key."""
    params = ask.get("params") or {}
    return bool(user.is_authenticated) and str(user.pk) == str(params.get("user_id"))


def _rule() -> Rule:
    path = setting("HERALD_CONNECT_RULE")
    return import_string(path) if path else default_rule


def _user_of(request: HttpRequest, ask: dict[str, Any]) -> Any:
    """``request.user`` from the middleware; when the request itself carried no session
    cookie (a proxy stripped it), the session named by the forwarded cookie."""
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return user
    headers = ask.get("headers") or {}
    cookie = headers.get("cookie") if isinstance(headers, dict) else None
    if not isinstance(cookie, str):
        return user if user is not None else _anonymous()
    key = parse_cookie(cookie).get(settings.SESSION_COOKIE_NAME)
    if not key:
        return user if user is not None else _anonymous()
    engine = import_module(settings.SESSION_ENGINE)
    inner = HttpRequest()
    inner.session = engine.SessionStore(key)
    inner.COOKIES = parse_cookie(cookie)
    return get_user(inner)


def _anonymous() -> Any:
    from django.contrib.auth.models import AnonymousUser

    return AnonymousUser()


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": code, "message": message}, status=status)


@csrf_exempt
@require_POST
def connect(request: HttpRequest) -> HttpResponse:
    if len(request.body) > MAX_BODY_BYTES:
        return _error(413, "too_large", "connect request larger than 64 KiB")
    try:
        ask = json.loads(request.body)
    except ValueError:
        return _error(400, "malformed_json", "the body is not JSON")
    if not isinstance(ask, dict):
        return _error(400, "invalid_request", "the body must be a JSON object")
    user = _user_of(request, ask)
    decision = _rule()(request, user, ask)
    if isinstance(decision, dict):
        if decision.get("allow") is True:
            answer = {"sub": str(user.pk)} if user.is_authenticated else {}
            answer.update(decision)
            return JsonResponse(answer)
        decision = False
    if decision is True:
        answer: dict[str, Any] = {"allow": True}
        if user.is_authenticated:
            answer["sub"] = str(user.pk)
        return JsonResponse(answer)
    if not user.is_authenticated:
        return _error(401, "unauthorized", "log in first")
    return _error(403, "forbidden", "not allowed on this stream")
