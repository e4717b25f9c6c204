"""The node-local request path: ``POST /v1/predict`` and ``POST /v1/feedback`` (JSON, see
request_codec), ``GET /v1/health``. Errors are JSON ``{"errors": {field: message}}`` with a 4xx
status: 400 bad input, 404 unknown request id or path, 405 wrong method, 409 a request that is
no longer waiting for its label, 411/413 missing or too large body."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.schema import StreamSchema
from nodeworker.request_codec import (
    CodecLimits,
    RequestError,
    parse_feedback,
    parse_predict,
    predict_response,
)
from nodeworker.sample_cache import Feedback

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024


class PredictService(Protocol):
    """What the endpoint serves (NodeRuntime implements it)."""

    schema: StreamSchema

    def predict(self, batch: SparseBatch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(scores (B,), assigned request ids (B,), model version)."""
        ...

    def feedback(self, request_id: int, label: float) -> Feedback: ...

    def health(self) -> dict[str, Any]: ...


FEEDBACK_ERRORS = {
    Feedback.UNKNOWN: (404, "Unknown request id: this node never served it."),
    Feedback.GONE: (
        409,
        "This request is no longer waiting for a label "
        "(already labelled, timed out after the label window, or dropped).",
    ),
}


class NodeHTTPServer:
    def __init__(
        self,
        service: PredictService,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: CodecLimits | None = None,
    ):
        self.service = service
        self.limits = limits or CodecLimits()
        self._httpd = ThreadingHTTPServer((host, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: load generators reuse connections

            def log_message(self, fmt, *args):
                log.debug("%s " + fmt, self.address_string(), *args)

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    raise RequestError({"body": "A Content-Length header is required."}, 411)
                if int(length) > MAX_BODY_BYTES:
                    self.close_connection = True  # the unread body must not become a request
                    raise RequestError(
                        {"body": f"At most {MAX_BODY_BYTES} bytes per request."}, 413
                    )
                raw = self.rfile.read(int(length))
                try:
                    return json.loads(raw)
                except ValueError as exc:
                    raise RequestError({"body": f"Invalid JSON: {exc}"}) from None

            def do_GET(self):
                if self.path == "/v1/health":
                    return self._reply(200, server.service.health())
                self._reply(404, {"errors": {"path": f"No such endpoint: GET {self.path}."}})

            def do_POST(self):
                try:
                    if self.path == "/v1/predict":
                        batch = parse_predict(self._body(), server.service.schema, server.limits)
                        scores, ids, version = server.service.predict(batch)
                        return self._reply(200, predict_response(scores, ids, version))
                    if self.path == "/v1/feedback":
                        rid, label = parse_feedback(self._body())
                        outcome = server.service.feedback(rid, label)
                        if outcome in FEEDBACK_ERRORS:
                            status, message = FEEDBACK_ERRORS[outcome]
                            return self._reply(status, {"errors": {"request_id": message}})
                        return self._reply(200, {"request_id": rid, "status": outcome.value})
                    self._reply(404, {"errors": {"path": f"No such endpoint: POST {self.path}."}})
                except RequestError as exc:
                    self._reply(exc.status, {"errors": exc.errors})
                except Exception:
                    log.exception("request %s failed", self.path)
                    self._reply(500, {"errors": {"server": "Internal error; see the node log."}})

            def _not_allowed(self):
                self._reply(405, {"errors": {"method": f"{self.command} is not allowed here."}})

            do_PUT = do_DELETE = do_PATCH = _not_allowed

        return Handler

    def start(self) -> NodeHTTPServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="node-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
