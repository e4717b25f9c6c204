"""The API answers JSON, never Django's HTML error pages (DEBUG's included: the embedded
default runs with DEBUG on, and a node token reaches the API)."""

from __future__ import annotations

import logging

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import JsonResponse

log = logging.getLogger(__name__)

API_PREFIXES = ("/api/", "/metrics")


class ApiJsonErrorsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not request.path.startswith(API_PREFIXES):
            return None
        if isinstance(exception, RequestDataTooBig):
            return JsonResponse({"detail": "The request body is too large."}, status=413)
        if isinstance(exception, SuspiciousOperation):
            return JsonResponse({"detail": "Bad request."}, status=400)
        log.error("%s %s failed", request.method, request.path, exc_info=exception)
        return JsonResponse({"detail": "Internal server error; see the server log."}, status=500)
