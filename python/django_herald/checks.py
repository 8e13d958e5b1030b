"""System checks: channels_redis settings that silently lose herald's messages.

herald's Django bridge receives on the channels ``specific.<prefix>!...``. channels_redis
drops messages past a channel's capacity without telling anyone (default 100), and forgets
group memberships older than ``group_expiry``; herald refreshes its memberships every
``membership_refresh`` seconds, so a shorter ``group_expiry`` drops them in between.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Warning

from .conf import setting

#: channels_redis' default ``capacity``.
DEFAULT_CAPACITY = 100


def _capacity_of(config: dict[str, Any], channel: str) -> int:
    """The capacity channels_redis applies to ``channel`` (first matching rule wins)."""
    rules = config.get("channel_capacity") or {}
    for pattern, capacity in dict(rules).items():
        matched = (
            pattern.match(channel) is not None
            if isinstance(pattern, re.Pattern)
            else fnmatch.fnmatchcase(channel, str(pattern))
        )
        if matched:
            return int(capacity)
    return int(config.get("capacity", DEFAULT_CAPACITY))


def check_channel_layers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    layers = getattr(settings, "CHANNEL_LAYERS", None) or {}
    prefix = setting("HERALD_DJANGO_CHANNEL_PREFIX")
    channel = f"specific.{prefix}!herald-node"
    refresh = int(setting("HERALD_DJANGO_MEMBERSHIP_REFRESH"))
    for alias, layer in layers.items():
        backend = str(layer.get("BACKEND", ""))
        if "channels_redis" not in backend:
            continue
        config = layer.get("CONFIG") or {}
        capacity = _capacity_of(config, channel)
        if capacity <= DEFAULT_CAPACITY:
            messages.append(
                Warning(
                    f"CHANNEL_LAYERS[{alias!r}]: herald's channel specific.{prefix}!* "
                    f"holds at most {capacity} messages; past it channels_redis drops "
                    "what Django sends to herald's groups, silently.",
                    hint=(
                        f'Add "channel_capacity": {{"specific.{prefix}!*": 10000}} to its '
                        "CONFIG."
                    ),
                    id="django_herald.W001",
                )
            )
        expiry = int(config.get("group_expiry", 86400))
        if expiry <= refresh:
            messages.append(
                Warning(
                    f"CHANNEL_LAYERS[{alias!r}]: group_expiry = {expiry}s is not above "
                    f"herald's membership refresh ({refresh}s): herald's group "
                    "memberships expire between refreshes and messages to them are lost.",
                    hint="Raise group_expiry (default 86400), or lower herald's "
                    "[django] membership_refresh and HERALD_DJANGO_MEMBERSHIP_REFRESH.",
                    id="django_herald.W002",
                )
            )
    return messages
