"""HTTP goes to Django; WebSockets at /message/<user_id>/stream/ go to the consumer."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchsite.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from .consumers import MessageConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_app,
        "websocket": URLRouter(
            [re_path(r"^message/(?P<user_id>[A-Za-z0-9._-]+)/stream/$", MessageConsumer.as_asgi())]
        ),
    }
)
