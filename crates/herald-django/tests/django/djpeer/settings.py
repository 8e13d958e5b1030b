"""Settings of the Django peer the bridge tests run against.

Everything that matters to the wire comes from the environment, so one project serves
every test case (the Rust test sets the same values on the herald side):

HERALD_TEST_HOSTS        comma-separated redis URLs, in shard order (required)
HERALD_TEST_BACKEND      "core" (RedisChannelLayer, default) or "pubsub"
HERALD_TEST_PREFIX       channels_redis prefix (default "asgi")
HERALD_TEST_KEYS         comma-separated symmetric_encryption_keys (default: none)
HERALD_TEST_GROUP_EXPIRY group_expiry in seconds (default 86400)
HERALD_TEST_CAPACITY     JSON object of channel_capacity globs (default: none)
"""
import json
import os

SECRET_KEY = "test-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["daphne", "channels"]
ROOT_URLCONF = "djpeer.urls"
ASGI_APPLICATION = "djpeer.asgi.application"
DATABASES = {}
USE_TZ = True

_backend = os.environ.get("HERALD_TEST_BACKEND", "core")
_config = {
    # socket_timeout=None keeps idle consumers alive with redis-py >= 8 (its default 5 s
    # timeout would cut channels_redis' 5 s BZPOPMIN).
    "hosts": [
        {"address": url, "socket_timeout": None}
        for url in os.environ["HERALD_TEST_HOSTS"].split(",")
    ],
    "prefix": os.environ.get("HERALD_TEST_PREFIX", "asgi"),
}
if os.environ.get("HERALD_TEST_KEYS"):
    _config["symmetric_encryption_keys"] = os.environ["HERALD_TEST_KEYS"].split(",")
if _backend == "core":
    _config["group_expiry"] = int(os.environ.get("HERALD_TEST_GROUP_EXPIRY", "86400"))
    if os.environ.get("HERALD_TEST_CAPACITY"):
        _config["channel_capacity"] = json.loads(os.environ["HERALD_TEST_CAPACITY"])

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": {
            "core": "channels_redis.core.RedisChannelLayer",
            "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
        }[_backend],
        "CONFIG": _config,
    }
}
