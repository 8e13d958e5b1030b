"""Settings of the end-to-end Django site (browser tests): the test settings plus a login
form, the seed's page and a file database named by HERALD_E2E_DB."""

import os

from tests.settings import *  # noqa: F401,F403

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("HERALD_E2E_DB", "/tmp/herald-e2e.sqlite3"),
    }
}
ROOT_URLCONF = "tests.e2e_urls"
LOGIN_REDIRECT_URL = "/page/"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [os.path.join(os.path.dirname(__file__), "templates")],
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
            ]
        },
    }
]
