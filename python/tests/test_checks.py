"""The system checks about channels_redis settings."""

from __future__ import annotations

from django.test import override_settings

from django_herald.checks import check_channel_layers

REDIS = "channels_redis.core.RedisChannelLayer"


def ids(messages) -> list[str]:
    return [m.id for m in messages]


@override_settings(CHANNEL_LAYERS={"default": {"BACKEND": REDIS, "CONFIG": {}}})
def test_default_capacity_warns() -> None:
    assert ids(check_channel_layers()) == ["django_herald.W001"]


@override_settings(
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": REDIS,
            "CONFIG": {"channel_capacity": {"specific.herald!*": 10000}},
        }
    }
)
def test_a_capacity_rule_for_herald_passes() -> None:
    assert check_channel_layers() == []


@override_settings(
    CHANNEL_LAYERS={
        "default": {
            "BACKEND": REDIS,
            "CONFIG": {"channel_capacity": {"specific.herald!*": 10000}, "group_expiry": 30},
        }
    }
)
def test_group_expiry_below_the_refresh_warns() -> None:
    assert ids(check_channel_layers()) == ["django_herald.W002"]


@override_settings(
    CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
)
def test_other_backends_are_not_checked() -> None:
    assert check_channel_layers() == []


def test_the_check_is_registered() -> None:
    from django.core import checks

    assert check_channel_layers in checks.registry.registry.get_checks()
