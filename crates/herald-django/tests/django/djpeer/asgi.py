import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djpeer.settings")

from django.core.asgi import get_asgi_application

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from .consumers import StreamConsumer  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter([path("message/<slug:slug>/stream/", StreamConsumer.as_asgi())]),
    }
)
