"""A slow-drip client (one byte per read, each read well within the read timeout) must not hold
a node HTTP worker beyond the whole-request deadline: headers and body share one deadline."""

from __future__ import annotations

import json
import select
import socket
import time

import pytest
import requests

from nodeworker.http import NodeHTTPServer
from tests.unit.test_node_http import Service, req

READ_TIMEOUT_S = 1.0
DEADLINE_S = 2.0
DRIP_EVERY_S = 0.2  # five times faster than the read timeout: no single read ever times out


def drip(
    url: str, data: bytes, prefix: bytes = b"", give_up_s: float = 20.0
) -> tuple[float, bytes]:
    """Send ``prefix`` at once, then ``data`` one byte per DRIP_EVERY_S until the server answers
    or closes; (seconds from the first byte to that, what the server sent)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        start = time.monotonic()
        sock.sendall(prefix)
        for byte in data:
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - start, b""
            readable, _, _ = select.select([sock], [], [], DRIP_EVERY_S)
            if readable:
                answer = b""
                try:
                    while chunk := sock.recv(65536):
                        answer += chunk
                except ConnectionResetError:
                    pass
                return time.monotonic() - start, answer
            if time.monotonic() - start > give_up_s:
                break
    pytest.fail(f"the server still read a dripping client after {give_up_s} s")


@pytest.fixture
def server():
    node = NodeHTTPServer(
        Service(),
        workers=1,
        backlog=1,
        read_timeout_s=READ_TIMEOUT_S,
        request_deadline_s=DEADLINE_S,
    ).start()
    yield node
    node.stop()


def test_dripped_headers_are_cut_at_the_request_deadline(server):
    headers = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 500
    held, answer = drip(server.url, headers)
    assert DEADLINE_S - 0.5 < held < DEADLINE_S + READ_TIMEOUT_S + 1.0, held
    assert answer == b""  # no request was read: the connection is just closed
    # the only worker is free again
    assert requests.get(server.url + "/v1/health", timeout=5).json() == {"status": "ok"}


def test_a_dripped_body_is_a_408_at_the_request_deadline(server):
    body = json.dumps({"requests": [req()] * 4}).encode()
    head = f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    held, answer = drip(server.url, body, prefix=head.encode())
    assert DEADLINE_S - 0.5 < held < DEADLINE_S + READ_TIMEOUT_S + 1.0, held
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 408 " in status_line, answer[:200]
    assert "in time" in json.loads(rest.split(b"\r\n\r\n", 1)[1])["errors"]["body"]
    ok = requests.post(server.url + "/v1/predict", json={"requests": [req()]}, timeout=5)
    assert ok.status_code == 200


def test_the_deadline_is_per_request_not_per_keep_alive_connection(server):
    with requests.Session() as session:
        assert session.get(server.url + "/v1/health", timeout=5).status_code == 200
        for _ in range(3):  # 2.4 s of the connection's life, past the deadline
            time.sleep(READ_TIMEOUT_S * 0.8)
            reply = session.get(server.url + "/v1/health", timeout=5)
            assert reply.status_code == 200 and reply.headers.get("Connection") != "close"


def test_framing_errors_of_the_base_server_are_json(server):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /v1/health HTTP/7.0\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b" 505 " in head.split(b"\r\n")[0] and b"application/json" in head
    assert "version" in json.loads(body)["errors"]["request"].lower()


def test_the_deadline_must_cover_the_read_timeout():
    with pytest.raises(ValueError, match="deadline"):
        NodeHTTPServer(Service(), read_timeout_s=5.0, request_deadline_s=1.0)
