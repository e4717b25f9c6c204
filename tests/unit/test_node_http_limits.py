"""The node endpoint under hostile clients (issue 17, failures 10 and 17): JSON-only answers,
no 5xx for malformed headers or bodies, a bounded pool of workers with read timeouts, and
feedback (the labels the node trains on) behind a shared secret."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import requests

from nodeworker.http import NodeHTTPServer, _is_loopback
from tests.unit.test_node_http import Service, post, req


class RawScores(Service):
    """Scores = the sum of the dense features, unsquashed: 1e39 (beyond float32) gives inf,
    as a real model's NaN would come out of its MLPs."""

    def predict(self, batch):
        _, ids, version = super().predict(batch)
        return batch.dense.sum(dim=1), ids, version


def serve(service=None, **options) -> NodeHTTPServer:
    return NodeHTTPServer(service or Service(), **options).start()


def raw_request(url: str, data: bytes) -> tuple[int, dict]:
    """Send bytes as they are (requests would refuse a malformed header); the server closes
    the connection after an error about the framing, so read to the end."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, body = reply.split(b"\r\n\r\n", 1)
    return int(head.split()[1]), json.loads(body)


def test_a_non_finite_score_is_a_400_and_every_answer_is_json():
    server = serve(RawScores())
    try:
        r = post(server.url, "/v1/predict", {"requests": [req(dense=(1e39, 0))]})
        assert r.status_code == 400 and "finite" in r.json()["errors"]["requests"]
        assert "NaN" not in r.text and "Infinity" not in r.text
        assert post(server.url, "/v1/predict", {"requests": [req()]}).status_code == 200
    finally:
        server.stop()


def test_malformed_lengths_and_deep_nesting_are_4xx():
    server = serve()
    try:
        deep = b"[" * 100_000 + b"]" * 100_000
        r = post(server.url, "/v1/predict", deep)
        assert r.status_code == 400 and "nested too deeply" in r.json()["errors"]["body"]
        body = json.dumps({"requests": [req()]}).encode()
        status, answer = raw_request(
            server.url,
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: \xc2\xb2\r\n\r\n" + body,
        )
        assert status == 411 and "Content-Length" in answer["errors"]["body"]
    finally:
        server.stop()


def test_stalled_clients_hold_a_bounded_pool_for_a_bounded_time():
    server = serve(workers=4, backlog=4, read_timeout_s=2.0)
    host, port = server.url.removeprefix("http://").split(":")
    before = threading.active_count()
    stalled = []
    for _ in range(40):  # a request line and no more: each would hold a thread forever
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\n")
        stalled.append(sock)
    try:
        time.sleep(0.3)
        assert threading.active_count() - before <= 1  # no thread per connection
        held = 0
        for sock in stalled:  # within the read timeout: only workers + queue are still open
            sock.settimeout(0.05)
            try:
                answer = sock.recv(4096)
                assert answer == b"" or b" 503 " in answer[:20], answer[:100]
            except TimeoutError:
                held += 1
            except ConnectionResetError:  # refused, our request line arrived after the close
                pass
        assert held <= 4 + 4
        deadline = time.monotonic() + 15
        answer = None
        while time.monotonic() < deadline:  # the read timeout frees the workers
            try:
                answer = requests.get(server.url + "/v1/health", timeout=3)
                break
            except requests.RequestException:
                time.sleep(0.2)
        assert answer is not None and answer.status_code in (200, 503)
        for sock in stalled:
            sock.close()
        time.sleep(2.5)
        assert requests.get(server.url + "/v1/health", timeout=5).json() == {"status": "ok"}
    finally:
        for sock in stalled:
            sock.close()
        server.stop()


def test_feedback_needs_the_secret_when_one_is_set():
    server = serve(feedback_secret="s3cret-label-key")
    try:
        post(server.url, "/v1/predict", {"requests": [req()]})
        body = json.dumps({"request_id": 0, "label": 1})
        anonymous = requests.post(server.url + "/v1/feedback", data=body, timeout=5)
        assert (
            anonymous.status_code == 401 and "Bearer" in anonymous.json()["errors"]["authorization"]
        )
        wrong = requests.post(
            server.url + "/v1/feedback",
            data=body,
            headers={"Authorization": "Bearer nope"},
            timeout=5,
        )
        assert wrong.status_code == 401
        right = requests.post(
            server.url + "/v1/feedback",
            data=body,
            headers={"Authorization": "Bearer s3cret-label-key"},
            timeout=5,
        )
        assert right.status_code == 200 and right.json()["status"] == "joined"
    finally:
        server.stop()


def test_feedback_without_a_secret_is_taken_on_loopback_only():
    assert _is_loopback("127.0.0.1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("no-such-host.invalid")
    server = serve()
    try:
        assert server.loopback and server.feedback_refusal(None) is None
        server.loopback = False  # as if bound to 0.0.0.0 (this test sends nothing off loopback)
        status, message = server.feedback_refusal(None)
        assert status == 403 and "secret" in message
    finally:
        server.stop()


def test_bad_pool_settings_are_refused():
    with pytest.raises(ValueError, match="workers"):
        NodeHTTPServer(Service(), workers=0)
    with pytest.raises(ValueError, match="timeout"):
        NodeHTTPServer(Service(), read_timeout_s=0)
