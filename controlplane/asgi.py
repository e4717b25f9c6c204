"""ASGI entry point: HTTP through Django (static files included, the appliance has no separate
web server), websockets through Channels with session authentication."""

import os

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
django.setup(set_prefix=False)


class SyncStackASGIHandler(ASGIHandler):
    """Django's ASGI handler running the middleware chain and the view in one thread hop.

    Every middleware and view of this project is synchronous. The stock handler runs the chain in
    async mode, so each middleware's process_request and process_response hops to a thread and
    back (about a dozen hops per request); here the whole sync chain runs in one hop. Measured
    in process: /api/health/ 1.3 ms instead of 2.2 ms of CPU, API reads 0.7-0.9 ms less.
    """

    def __init__(self) -> None:
        super(ASGIHandler, self).__init__()
        self.load_middleware(is_async=False)

    async def get_response_async(self, request):
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)


django_asgi_app = SyncStackASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs the app registry loaded)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from controlplane import status  # noqa: E402
from controlplane.routing import websocket_urlpatterns  # noqa: E402

if settings.REDIS_URL:  # the in-memory layer is not thread-safe: no batching thread for it
    status.batch_fleet_events()

application = ProtocolTypeRouter(
    {
        "http": ASGIStaticFilesHandler(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
