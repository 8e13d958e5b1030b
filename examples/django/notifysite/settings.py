"""Settings of the notification example: a plain Django site whose pushes go out
through herald. Django serves pages and views; herald holds the WebSockets."""
import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.staticfiles",
    "channels",
    "notifications",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "notifysite.urls"
WSGI_APPLICATION = "notifysite.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
DATABASES = {}
USE_TZ = True
STATIC_URL = "static/"

# Where the browser finds herald (its WebSockets and its /herald.js client).
HERALD_URL = os.environ.get("HERALD_URL", "http://127.0.0.1:8000")

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # socket_timeout=None: with redis-py >= 8 the default 5 s socket timeout
            # breaks channels_redis' 5 s blocking receive in any Django consumer.
            "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
            # All herald-bound messages share one Redis key (asgispecific.herald!);
            # channels_redis drops group_send messages silently once a key holds
            # `capacity` (100) of them, so give herald's channels room.
            "channel_capacity": {"specific.herald!*": 10000},
        },
    }
}
