"""Django's static files for the ASGI server (controlplane.asgi)."""

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.exceptions import SuspiciousOperation
from django.http import Http404


class StaticFilesHandler(ASGIStaticFilesHandler):
    """Django's static files for the ASGI server; a path that leaves the static root
    (``/static/%2e%2e/...``) is a 404 like any missing file, not a SuspiciousFileOperation 500."""

    def serve(self, request):
        try:
            return super().serve(request)
        except SuspiciousOperation:
            raise Http404("No such static file.") from None
