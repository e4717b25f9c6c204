"""A tiny control plane for the node's telemetry sender: it ingests like the real one (checks the
path and the node's token, validates, dedupes by (node, epoch, seq)), and a test can switch it down
(connection refused), failing (500 for everything) or up again on the same port, or give it a
``rule(batch) -> (status, body) | None`` that refuses some batches."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from nodeworker import protocol
from nodeworker.protocol import telemetry as protocol_telemetry
from tests.services import free_port

TOKEN = "node-token-123"

Rule = Callable[[protocol_telemetry.TelemetryBatch], "tuple[int, Any] | None"]


class FakePlane:
    def __init__(self, rule: Rule | None = None):
        self.rule = rule
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.samples: dict[tuple[str, int, int], dict] = {}
        self.bodies: list[int] = []  # byte size of every request
        self.posts = 0
        self.duplicates = 0
        self.running: list[protocol_telemetry.RunningState | None] = []  # each accepted batch's
        self.mode = "up"
        self.server: ThreadingHTTPServer | None = None

    def up(self) -> FakePlane:
        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler_for(self))
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.mode = "up"
        return self

    def down(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def seqs(self, node: str = "edge-1") -> list[int]:
        return sorted(seq for n, _, seq in self.samples if n == node)

    def ingest(self, headers: Any, path: str, body: bytes) -> tuple[int, Any]:
        self.bodies.append(len(body))
        if self.mode == "fail":
            return 500, {"detail": "boom"}
        if path != protocol.TELEMETRY_PATH:
            return 404, {}
        if headers.get("Authorization") != f"Node {TOKEN}":
            return 401, {"detail": "bad token"}
        try:
            batch = protocol_telemetry.validate_batch(json.loads(body))
        except protocol_telemetry.TelemetryError as exc:
            return 400, exc.errors
        answer = self.rule(batch) if self.rule else None
        if answer is not None:
            return answer
        self.posts += 1
        self.running.append(batch.running)
        for s in batch.samples:
            key = (batch.node, batch.epoch, s["seq"])
            if key in self.samples:
                self.duplicates += 1
            else:
                self.samples[key] = s
        return 201, {"accepted": len(batch.samples)}


def _handler_for(plane: FakePlane) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status, answer = plane.ingest(self.headers, self.path, body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
