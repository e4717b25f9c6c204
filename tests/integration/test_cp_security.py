"""Standard controls of issue 17 (failures 9, 11, 16): login throttling and lockout, static
paths that leave the static root, websockets closed when their user's access ends."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client, override_settings

from controlplane.http_handler import StaticFilesHandler, SyncStackASGIHandler
from tests.integration.test_cp_http_handler import get

pytestmark = pytest.mark.django_db


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
    app = StaticFilesHandler(SyncStackASGIHandler())
    assert get(app, "/static/../controlplane/settings.py")["status"] == 404
    assert get(app, "/static/%2e%2e/controlplane/settings.py")["status"] == 404
