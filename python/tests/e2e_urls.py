"""The end-to-end site: Django's login form, the seed's page, herald's connect view."""

import os

from django.contrib.auth import logout
from django.contrib.auth import views as auth_views
from django.http import FileResponse, HttpResponse
from django.shortcuts import render
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt


class PageUser:
    """What the seed's template reads: ``{{ user.UserID }}``."""

    def __init__(self, user_id: str):
        self.UserID = user_id


def page(request):
    # The stream of `?as=<id>` (a browser trying another user's stream), else one's own.
    user_id = request.GET.get("as") or (str(request.user.pk) if request.user.is_authenticated else "0")
    return render(request, "seed/stream.html", {"user": PageUser(user_id)})


def page_v1(request):
    """The seed's page with only the script src switched to herald's client (/herald.js)."""
    user_id = str(request.user.pk) if request.user.is_authenticated else "0"
    return render(request, "seed/stream_v1.html", {"user": PageUser(user_id)})


def dev_page(request):
    """Development layout: herald on another port of the same host; only the WebSocket URL
    of the page differs (cookies are per host, not per port)."""
    user_id = str(request.user.pk) if request.user.is_authenticated else "0"
    return render(
        request,
        "seed/stream_dev.html",
        {"user": PageUser(user_id), "herald_host": os.environ["HERALD_E2E_HERALD_HOST"]},
    )


@csrf_exempt
def logout_now(request):
    logout(request)
    return HttpResponse(status=204)


def library(request):
    return FileResponse(open(os.environ["HERALD_E2E_RWS_JS"], "rb"), content_type="text/javascript")


urlpatterns = [
    path("login/", auth_views.LoginView.as_view()),
    path("logout-now/", logout_now),
    path("page/", page),
    path("dev-page/", dev_page),
    path("page-v1/", page_v1),
    path("static/reconnecting-websocket.min.js", library),
    path("herald/", include("django_herald.urls")),
]
