"""Settings of django_herald's own tests: real SQLite, sessions and auth."""

import os
import tempfile

SECRET_KEY = "django-herald-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django_herald",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "tests.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(tempfile.gettempdir(), f"django-herald-{os.getpid()}.sqlite3"),
        "TEST": {"NAME": os.path.join(tempfile.gettempdir(), f"django-herald-test-{os.getpid()}.sqlite3")},
    }
}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.contrib.auth.context_processors.auth"]},
    }
]
HERALD_SECRET = "django-herald-test-secret-of-32-bytes!"
HERALD_API_KEY = "test-api-key"
HERALD_PUBLISH_BACKOFF = 0.05
HERALD_WEBHOOK_SECRET = "django-herald-webhook-secret"
STATIC_URL = "/static/"
