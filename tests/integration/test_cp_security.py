"""Standard controls of issue 17 (failures 9, 11, 16): login throttling and lockout, static
paths that leave the static root, websockets closed when their user's access ends."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from asgiref.testing import ApplicationCommunicator
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.contrib.sessions.backends.db import SessionStore
from django.core.handlers.asgi import ASGIHandler
from django.test import Client, override_settings

from controlplane.consumers import FleetConsumer
from controlplane.http_handler import StaticFilesHandler
from controlplane.roles import ensure_groups

pytestmark = pytest.mark.django_db


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


@pytest.mark.parametrize("url", ["/accounts/login/", "/admin/login/"])
def test_repeated_failed_logins_lock_the_address_out(url):
    user = get_user_model().objects.create_user("guessed", password="the-right-one-123")
    user.is_staff = True
    user.save()
    browser = Client()
    with override_settings(AXES_FAILURE_LIMIT=3):
        for attempt in range(3):
            response = browser.post(url, {"username": "guessed", "password": f"wrong-{attempt}"})
            # the form again, with its error; the third failure locks the address out
            assert response.status_code == (429 if attempt == 2 else 200)
        locked = browser.post(url, {"username": "guessed", "password": "the-right-one-123"})
        assert locked.status_code == 429
        other = Client(REMOTE_ADDR="10.9.8.7")  # another address is not locked out
        assert (
            other.post(url, {"username": "guessed", "password": "the-right-one-123"}).status_code
            == 302
        )


def test_a_static_path_leaving_the_static_root_is_a_404():
    app = StaticFilesHandler(ASGIHandler())
    assert get(app, "/static/../controlplane/settings.py")["status"] == 404
    assert get(app, "/static/%2e%2e/controlplane/settings.py")["status"] == 404


IN_MEMORY = override_settings(
    CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
)


def _viewer(name: str):
    ensure_groups()
    user = get_user_model().objects.create_user(name, password=None)
    user.groups.add(Group.objects.get(name="viewer"))
    return user


def _closed_by(user, session_key: str | None, revoke) -> dict:
    """Open a dashboard socket as ``user`` (in the session), run ``revoke`` (sync), and return
    what the server sent next."""

    async def script() -> dict:
        communicator = WebsocketCommunicator(FleetConsumer.as_asgi(), "/ws/fleet/")
        communicator.scope["user"] = user
        if session_key:
            communicator.scope["session"] = SessionStore(session_key)
        connected, _ = await communicator.connect()
        assert connected
        await sync_to_async(revoke)()
        try:
            return await communicator.receive_output(timeout=5)
        finally:
            await communicator.disconnect()

    return async_to_sync(script)()


@IN_MEMORY
@pytest.mark.django_db(transaction=True)
def test_logging_out_closes_that_sessions_websockets():
    user = _viewer("ws-logout")
    browser = Client()
    browser.force_login(user)
    key = browser.session.session_key
    closed = _closed_by(user, key, lambda: browser.post("/accounts/logout/"))
    assert closed == {"type": "websocket.close", "code": 4401}


@IN_MEMORY
@pytest.mark.django_db(transaction=True)
def test_deactivating_a_user_closes_their_websockets():
    user = _viewer("ws-deactivated")

    def deactivate():
        user.is_active = False
        user.save()

    assert _closed_by(user, None, deactivate) == {"type": "websocket.close", "code": 4401}


@IN_MEMORY
@pytest.mark.django_db(transaction=True)
def test_a_role_change_closes_the_users_websockets():
    user = _viewer("ws-demoted")
    demote = lambda: user.groups.remove(Group.objects.get(name="viewer"))  # noqa: E731
    assert _closed_by(user, None, demote) == {"type": "websocket.close", "code": 4403}


def test_api_tokens_are_stored_hashed_and_shown_once():
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    from controlplane.tokens import hash_api_token

    ensure_groups()
    user = _viewer("token-owner")
    raw = Token.objects.create(user=user).key  # the creator sees the raw key this once
    stored = Token.objects.get(user=user).key
    assert stored == hash_api_token(raw) and stored != raw
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {raw}")
    assert client.get("/api/me/").status_code == 200
    client.credentials(HTTP_AUTHORIZATION=f"Token {stored}")  # a copy of the table is useless
    assert client.get("/api/me/").status_code == 401


def test_the_migration_hashes_existing_tokens():
    import importlib

    from django.apps import apps as django_apps
    from rest_framework.authtoken.models import Token

    from controlplane.tokens import hash_api_token

    migration = importlib.import_module("migrations.0004_hash_api_tokens")
    user = _viewer("legacy-owner")
    Token.objects.bulk_create([Token(key="0123456789abcdef0123456789abcdef01234567", user=user)])
    migration.hash_tokens(django_apps, None)  # bulk_create sent no signal: stored as it was
    assert Token.objects.get(user=user).key == hash_api_token(
        "0123456789abcdef0123456789abcdef01234567"
    )
