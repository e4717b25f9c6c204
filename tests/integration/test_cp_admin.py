"""The Django admin validates policies, nodes and experiment runs exactly as the API does."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from controlplane.models import Node, Policy, PolicyVersion
from nodeworker import protocol

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client() -> Client:
    user = get_user_model().objects.create_superuser("root", password=None)
    client = Client()
    client.force_login(user)
    return client


def policy_form(**overrides) -> dict:
    data = {"name": "gold", "description": "", "reason": "first", **protocol.POLICY_DEFAULTS}
    data["auc_floor"] = ""
    data.update(overrides)
    # The version inline's management form (no rows).
    for key, value in {"TOTAL_FORMS": 0, "INITIAL_FORMS": 0, "MIN_NUM_FORMS": 0}.items():
        data[f"versions-{key}"] = value
    return data


def test_admin_policy_errors_match_the_api(admin_client):
    response = admin_client.post(
        "/admin/controlplane/policy/add/", policy_form(tau=1.5, r_min=8, r_max=4)
    )
    assert response.status_code == 200  # the form again, with errors
    errors = response.context["adminform"].form.errors
    assert errors == {"tau": ["Must be >= 0.5 and <= 1.0."], "r_max": ["Must be >= r_min."]}
    assert not Policy.objects.exists()


def test_admin_policy_save_records_a_version(admin_client):
    response = admin_client.post("/admin/controlplane/policy/add/", policy_form(tau=0.95))
    assert response.status_code == 302, response.content[:2000]
    (version,) = PolicyVersion.objects.all()
    assert version.actor == "user:root" and version.reason == "first"
    assert version.values["tau"] == 0.95


def test_admin_node_add_shows_the_token_once(admin_client):
    response = admin_client.post(
        "/admin/controlplane/node/add/",
        {"name": "edge-1", "host": "h1", "topology": "{}", "policy": ""},
        follow=True,
    )
    messages = [str(m) for m in response.context["messages"]]
    token = next(m for m in messages if "Token of edge-1" in m).rsplit(": ", 1)[1]
    from controlplane.tokens import hash_token

    assert Node.objects.get(name="edge-1").token_hash == hash_token(token)
    bad = admin_client.post(
        "/admin/controlplane/node/add/", {"name": "Bad Name", "topology": "{}", "policy": ""}
    )
    assert "name" in bad.context["adminform"].form.errors
