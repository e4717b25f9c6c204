"""controlplane.http_handler in process: a request's synchronous work runs in one hop on one of a
few long-lived threads, with its request_started and request_finished signals; a streamed
response is closed only after its last chunk was sent."""

from __future__ import annotations

import threading

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.core.signals import request_finished, request_started
from django.http import StreamingHttpResponse
from django.test import override_settings
from django.urls import path

from controlplane.http_handler import REQUEST_THREADS, SyncStackASGIHandler

events: list[tuple[str, str]] = []


def _record(kind: str):
    def receiver(**kwargs) -> None:
        events.append((kind, threading.current_thread().name))

    return receiver


def streamed(request):
    async def chunks():
        for i in range(3):
            events.append(("chunk", str(i)))
            yield f"part {i};"

    return StreamingHttpResponse(chunks(), content_type="text/plain")


urlpatterns = [path("streamed/", streamed)]


@pytest.fixture
def signals_recorded():
    events.clear()
    started, finished = _record("started"), _record("finished")
    request_started.connect(started)
    request_finished.connect(finished)
    yield events
    request_started.disconnect(started)
    request_finished.disconnect(finished)


def get(app, url: str) -> dict:
    """Status and body of a GET through the ASGI interface, as a server would call it."""
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": url,
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
    }

    async def exchange() -> dict:
        communicator = ApplicationCommunicator(app, scope)
        await communicator.send_input({"type": "http.request", "body": b""})
        start = await communicator.receive_output(10)
        body = b""
        while True:
            message = await communicator.receive_output(10)
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await communicator.wait(10)
        return {"status": start["status"], "body": body}

    return async_to_sync(exchange)()


@pytest.mark.django_db(transaction=True)
def test_each_request_runs_start_to_finish_on_one_of_the_long_lived_threads(signals_recorded):
    app = SyncStackASGIHandler()
    requests = 4 * REQUEST_THREADS
    for _ in range(requests):
        response = get(app, "/api/health/")
        assert response["status"] == 200, response["body"]
    # the stock handler starts a new thread for every request (and one more to join it)
    assert len(signals_recorded) == 2 * requests
    for (kind_a, thread_a), (kind_b, thread_b) in zip(
        signals_recorded[::2], signals_recorded[1::2], strict=True
    ):
        assert (kind_a, kind_b) == ("started", "finished")
        assert thread_a == thread_b
    threads = {name for _, name in signals_recorded}
    assert len(threads) <= REQUEST_THREADS
    assert all(name.startswith("request") for name in threads), threads


@override_settings(ROOT_URLCONF=__name__)
def test_a_streamed_response_is_closed_after_its_last_chunk(signals_recorded):
    response = get(SyncStackASGIHandler(), "/streamed/")
    assert response["status"] == 200
    assert response["body"] == b"part 0;part 1;part 2;"
    kinds = [kind for kind, _ in signals_recorded]
    assert kinds == ["started", "chunk", "chunk", "chunk", "finished"]
