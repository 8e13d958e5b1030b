"""Settings of the Django Channels peer that bench/compare measures.

The seed's stack: daphne + channels + channels_redis, the route /message/<id>/stream/
joining group user.<id>, plus a tiny publish view calling group_send.
"""
import os

SECRET_KEY = "bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["daphne", "channels"]
MIDDLEWARE = []
ROOT_URLCONF = "benchsite.urls"
ASGI_APPLICATION = "benchsite.asgi.application"
USE_TZ = True
DATABASES = {}
LOGGING = {"version": 1, "disable_existing_loggers": True, "root": {"level": "ERROR"}}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6390/0")]},
    }
}
