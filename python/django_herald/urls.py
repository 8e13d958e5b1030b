"""``path("herald/", include("django_herald.urls"))`` → ``/herald/connect/`` (the connect
hook) and ``/herald/webhook/`` (``[webhooks] url``)."""

from django.urls import path

from . import views, webhooks

app_name = "django_herald"
urlpatterns = [
    path("connect/", views.connect, name="connect"),
    path("webhook/", webhooks.webhook, name="webhook"),
]
