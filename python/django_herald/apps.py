"""The app config: registers the system checks."""

from __future__ import annotations

from django.apps import AppConfig


class HeraldConfig(AppConfig):
    name = "django_herald"
    verbose_name = "herald"

    def ready(self) -> None:
        from django.core import checks

        from . import checks as herald_checks

        checks.register(herald_checks.check_channel_layers)
