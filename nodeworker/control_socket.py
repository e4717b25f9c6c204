"""The control channel between the node's Celery tasks and the running NodeRuntime: one JSON
request per connection over a Unix socket (file permissions are the access control).

Request ``{"op": name, "kwargs": {...}}``; reply ``{"ok": true, "result": {...}}`` or
``{"ok": false, "error": "...", "fields": {...}}``. Only the declared operations
(nodeworker.protocol.operations.OPERATIONS) are callable, and their arguments are checked against
the declaration here, before the runtime sees them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any

from nodeworker.protocol.operations import OPERATIONS

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # apply_delta carries rows


class ControlError(RuntimeError):
    """The runtime refused or failed the request (its message is the runtime's)."""

    def __init__(self, message: str, fields: dict[str, str] | None = None):
        # Fields go into the message too: Celery rebuilds exceptions from their message alone.
        detail = "; ".join(f"{k}: {v}" for k, v in (fields or {}).items())
        super().__init__(f"{message} ({detail})" if detail else message)
        self.fields = fields or {}


class InvalidRequest(ValueError):
    """Raised by a runtime op for bad arguments; ``fields`` maps argument -> message."""

    def __init__(self, fields: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


def _read_line(sock_file) -> bytes:
    line = sock_file.readline(MAX_MESSAGE_BYTES + 1)
    if len(line) > MAX_MESSAGE_BYTES:
        raise ValueError("control message too large")
    return line


class ControlServer:
    """Serves ``target.<op>(**kwargs)`` for each declared op on a Unix socket, in threads."""

    def __init__(self, path: str | Path, target: Any):
        self.path = Path(path)
        self.target = target
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def dispatch(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict) or not isinstance(request.get("kwargs", {}), dict):
            return {"ok": False, "error": 'expected {"op": name, "kwargs": {...}}'}
        op = request.get("op")
        spec = OPERATIONS.get(op) if isinstance(op, str) else None
        if spec is None:
            return {"ok": False, "error": f"unknown op {op!r}; known: {', '.join(OPERATIONS)}"}
        kwargs, errors = spec.validate(request.get("kwargs", {}))
        if errors:
            detail = "; ".join(f"{k}: {v}" for k, v in errors.items())
            return {"ok": False, "error": f"bad arguments for {op}: {detail}", "fields": errors}
        try:
            result = getattr(self.target, spec.name)(**kwargs)
        except InvalidRequest as exc:
            return {"ok": False, "error": str(exc), "fields": exc.fields}
        except Exception as exc:  # the runtime's failure is the caller's answer
            log.exception("control op %s failed", op)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"ok": True, "result": result}

    def start(self) -> ControlServer:
        server_self = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                try:
                    request = json.loads(_read_line(self.rfile))
                except ValueError as exc:
                    reply = {"ok": False, "error": f"bad request: {exc}"}
                else:
                    reply = server_self.dispatch(request)
                self.wfile.write(json.dumps(reply, default=str).encode() + b"\n")

        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.path.unlink()  # a stale socket of a previous run
        old_umask = os.umask(0o177)  # owner-only socket
        try:
            self._server = socketserver.ThreadingUnixStreamServer(str(self.path), Handler)
        finally:
            os.umask(old_umask)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="control", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.path.unlink(missing_ok=True)


class ControlClient:
    def __init__(self, path: str | Path, timeout_s: float = 120.0):
        self.path = Path(path)
        self.timeout_s = timeout_s

    def call(self, op: str, **kwargs: Any) -> Any:
        """The op's result; ControlError when the runtime refused it, OSError when it is down."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.timeout_s)
            sock.connect(str(self.path))
            sock.sendall(json.dumps({"op": op, "kwargs": kwargs}).encode() + b"\n")
            with sock.makefile("rb") as f:
                line = _read_line(f)
        if not line:
            raise ControlError(f"the runtime closed the control channel during {op}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "unknown error"), reply.get("fields"))
        return reply.get("result")
