"""ASGI entry point: HTTP through Django (static files included, the appliance has no separate
web server), websockets through Channels with session authentication."""

import gc
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402

from controlplane.http_handler import StaticFilesHandler  # noqa: E402

django_asgi_app = ASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs the app registry loaded)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import get_resolver  # noqa: E402

from controlplane import status  # noqa: E402
from controlplane.routing import websocket_urlpatterns  # noqa: E402

if settings.REDIS_URL:  # the in-memory layer is not thread-safe: no batching thread for it
    status.batch_fleet_events()
else:  # the worker's and the CLI's events reach this process's layer through it
    status.receive_relayed_events()

application = ProtocolTypeRouter(
    {
        "http": StaticFilesHandler(django_asgi_app),
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)

# Everything alive once the app is loaded (Django, DRF, the URLconf and views, Channels) lives as
# long as the process. Frozen, out of the garbage collector's reach, a full collection walks the
# objects of the requests in flight (3,000-35,000) instead of ~124,000 more, while the whole
# process, event loop included, stands still: 300-370 ms per full collection on average, up to
# 1.1 s, against 54-68 ms, up to 210 ms (this machine under load; docs/BENCHMARKS.md, issue 6).
if "gc_freeze" not in settings.LIVEUPDATE_PLAIN_FRAMEWORK:
    get_resolver().url_patterns  # noqa: B018  (imports the views and serializers now, to freeze them)
    gc.collect()
    gc.freeze()
