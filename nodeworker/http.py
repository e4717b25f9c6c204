"""The node-local request path: ``POST /v1/predict`` and ``POST /v1/feedback`` (JSON, see
request_codec), ``GET /v1/health``. Every answer is JSON (no NaN). Errors are
``{"errors": {field: message}}`` with a 4xx status: 400 bad input (a score that would not be
finite included), 401 feedback without the node's feedback secret, 403 feedback on a server
reachable from other hosts that has no secret, 404 unknown request id or path, 405 wrong method,
408 a body not sent in time, 409 a request that is no longer waiting for its label, 411/413
missing or too large body; 503 when every worker is busy.

Connections are served by a fixed pool of worker threads behind a bounded queue (a connection
beyond both is answered 503 and closed). Every read waits at most the read timeout, and a request
(its line, headers and body) must arrive within the request deadline of its first byte, so a
client dripping one byte per read holds a worker no longer than that either. Feedback (the
labels the node trains on) needs ``Authorization: Bearer <feedback secret>`` when a secret is
set; without one it is taken only on a loopback address."""

from __future__ import annotations

import hmac
import io
import ipaddress
import json
import logging
import queue
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
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
BUSY = json.dumps({"errors": {"server": "Every worker is busy; retry later."}}).encode()


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


class _PooledHTTPServer(HTTPServer):
    """HTTPServer whose connections are handled by ``workers`` threads fed by a queue of at most
    ``backlog`` connections; one more is answered 503 at once."""

    def __init__(self, address, handler, workers: int, backlog: int):
        super().__init__(address, handler)
        self._connections: queue.Queue = queue.Queue(maxsize=backlog)
        self._workers = [
            threading.Thread(target=self._work, name=f"node-http-{i}", daemon=True)
            for i in range(workers)
        ]
        for worker in self._workers:
            worker.start()

    def process_request(self, request, client_address) -> None:
        try:
            self._connections.put_nowait((request, client_address))
        except queue.Full:
            try:
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(BUSY)}\r\nConnection: close\r\n\r\n".encode()
                    + BUSY
                )
            except OSError:
                pass
            self.shutdown_request(request)

    def _work(self) -> None:
        while True:
            item = self._connections.get()
            if item is None:
                return
            request, client_address = item
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        for _ in self._workers:
            try:
                self._connections.put_nowait(None)
            except queue.Full:
                break  # daemon threads: they end with the process


class _DeadlineSocketReader(io.RawIOBase):
    """The connection as a raw stream whose reads share one deadline per request: each read waits
    at most ``read_timeout_s`` and never past ``request_deadline_s`` after the request's first
    byte (the idle wait before it is bounded by the read timeout alone)."""

    def __init__(self, sock: socket.socket, read_timeout_s: float, request_deadline_s: float):
        super().__init__()
        self._sock = sock
        self._read_timeout_s = read_timeout_s
        self._request_deadline_s = request_deadline_s
        self._deadline: float | None = None

    def readable(self) -> bool:
        return True

    def next_request(self) -> None:
        self._deadline = None

    def readinto(self, buffer) -> int:
        wait = self._read_timeout_s
        if self._deadline is not None:
            wait = min(wait, self._deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError("the request did not arrive within its deadline")
        self._sock.settimeout(wait)
        received = self._sock.recv_into(buffer)
        if received and self._deadline is None:
            self._deadline = time.monotonic() + self._request_deadline_s
        return received


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


class NodeHTTPServer:
    def __init__(
        self,
        service: PredictService,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: CodecLimits | None = None,
        *,
        feedback_secret: str | None = None,
        workers: int = 32,
        backlog: int = 64,
        read_timeout_s: float = 10.0,
        request_deadline_s: float = 30.0,
    ):
        if not 1 <= workers <= 1024 or not 0 <= backlog <= 65536:
            raise ValueError("workers must be in 1..1024 and backlog in 0..65536")
        if not 0 < read_timeout_s <= request_deadline_s <= 3600:
            raise ValueError("need 0 < read timeout <= request deadline <= 3600 s")
        self.service = service
        self.limits = limits or CodecLimits()
        self.feedback_secret = feedback_secret or None
        self.read_timeout_s = read_timeout_s
        self.request_deadline_s = request_deadline_s
        self.loopback = _is_loopback(host)
        self._httpd = _PooledHTTPServer((host, port), _handler_for(self), workers, max(1, backlog))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        if isinstance(host, bytes):  # the socket module types AF_UNIX addresses as bytes
            host = host.decode()
        return f"http://{host}:{port}"

    def feedback_refusal(self, authorization: str | None) -> tuple[int, str] | None:
        """(status, message) when a feedback request may not label anything, else None."""
        if self.feedback_secret is None:
            if self.loopback:
                return None
            return 403, "Feedback needs the node's feedback secret, and none is set."
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), self.feedback_secret.encode()):
            return 401, "Send 'Authorization: Bearer <the node's feedback secret>'."
        return None

    def start(self) -> NodeHTTPServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="node-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class _NodeRequestHandler(BaseHTTPRequestHandler):
    """One connection to a NodeHTTPServer (``node``, set by _handler_for)."""

    node: NodeHTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: load generators reuse connections

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self._reader = _DeadlineSocketReader(
            self.connection, self.node.read_timeout_s, self.node.request_deadline_s
        )
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.next_request()
        super().handle_one_request()

    def log_message(self, format, *args):  # noqa: A002 (the base class names it so)
        log.debug("%s " + format, self.address_string(), *args)

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body, allow_nan=False).encode()
        self.connection.settimeout(self.node.read_timeout_s)  # a reader that never reads
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_error(self, code, message=None, explain=None) -> None:
        """The base class's framing errors (bad request line, too many headers) as JSON, with a
        status line and headers even before the request's version was read."""
        self.close_connection = True
        self.request_version = self.protocol_version
        self._reply(code, {"errors": {"request": message or self.responses[code][0]}})

    def _body(self) -> Any:
        length = self.headers.get("Content-Length")
        if length is None or not (length.isascii() and length.isdigit()):
            self.close_connection = True
            raise RequestError({"body": "A Content-Length header is required."}, 411)
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True  # the unread body must not become a request
            raise RequestError({"body": f"At most {MAX_BODY_BYTES} bytes per request."}, 413)
        try:
            raw = self.rfile.read(int(length))
        except TimeoutError:
            self.close_connection = True
            raise RequestError({"body": "The body did not arrive in time."}, 408) from None
        try:
            return json.loads(raw)
        except RecursionError:
            raise RequestError({"body": "Invalid JSON: nested too deeply."}) from None
        except ValueError as exc:
            raise RequestError({"body": f"Invalid JSON: {exc}"}) from None

    def do_GET(self):
        if self.path == "/v1/health":
            return self._reply(200, self.node.service.health())
        self._reply(404, {"errors": {"path": f"No such endpoint: GET {self.path}."}})

    def _predict(self) -> None:
        batch = parse_predict(self._body(), self.node.service.schema, self.node.limits)
        scores, ids, version = self.node.service.predict(batch)
        if not bool(torch.isfinite(scores).all()):
            raise RequestError(
                {"requests": "These inputs give no finite score (dense values too large?)."}
            )
        self._reply(200, predict_response(scores, ids, version))

    def _feedback(self) -> None:
        refusal = self.node.feedback_refusal(self.headers.get("Authorization"))
        if refusal is not None:
            self.close_connection = True  # its body is not read
            raise RequestError({"authorization": refusal[1]}, refusal[0])
        rid, label = parse_feedback(self._body())
        outcome = self.node.service.feedback(rid, label)
        if outcome in FEEDBACK_ERRORS:
            status, message = FEEDBACK_ERRORS[outcome]
            raise RequestError({"request_id": message}, status)
        self._reply(200, {"request_id": rid, "status": outcome.value})

    def do_POST(self):
        try:
            if self.path == "/v1/predict":
                return self._predict()
            if self.path == "/v1/feedback":
                return self._feedback()
            self._reply(404, {"errors": {"path": f"No such endpoint: POST {self.path}."}})
        except RequestError as exc:
            self._reply(exc.status, {"errors": exc.errors})
        except Exception:
            log.exception("request %s failed", self.path)
            self.close_connection = True
            self._reply(500, {"errors": {"server": "Internal error; see the node log."}})

    def _not_allowed(self):
        self._reply(405, {"errors": {"method": f"{self.command} is not allowed here."}})

    do_PUT = do_DELETE = do_PATCH = _not_allowed


def _handler_for(node: NodeHTTPServer) -> type[_NodeRequestHandler]:
    return type("NodeRequestHandler", (_NodeRequestHandler,), {"node": node})
