"""The node operations are declared once (nodeworker.protocol.operations): every declared one
is reachable through the control socket, a Celery task and (with a role) the API and the node
page, each with the declared arguments and role, and nothing undeclared is."""

from __future__ import annotations

import inspect
import json
import re

import pytest
from django.urls import reverse

from controlplane.views import NodeViewSet
from nodeworker.control_socket import ControlServer
from nodeworker.node_operations import NodeOperations
from nodeworker.protocol import operations
from nodeworker.protocol.operations import NODE_OPERATIONS, OPERATIONS, PLANE_ACTIONS
from tests.integration.cp_support import make_node

# NodeOperations' public methods the node runs itself (never sent over the socket).
NODE_INTERNAL = {"start_trainer", "partition", "supervise", "health", "feed_counts"}


class Echo:
    """A runtime whose every method echoes its name and keyword arguments."""

    def __getattr__(self, name):
        return lambda **kwargs: {"op": name, "kwargs": kwargs}


def valid_kwargs(spec: operations.NodeOperationSpec) -> dict:
    samples = {
        "policy": {},
        "checkpoint": {"location": "/models/base.pt"},
        "object": {"user": {"rows": [], "values": []}},
        "str": "base",
        "bool": True,
        "int": 3,
        "float": 0.7,
    }
    return {a.name: samples[a.kind] for a in spec.arguments if a.required}


def test_each_declared_operation_is_a_runtime_method_with_the_declared_keywords():
    methods = {
        name
        for name, _ in inspect.getmembers(NodeOperations, inspect.isfunction)
        if not name.startswith("_")
    }
    assert methods - NODE_INTERNAL == set(OPERATIONS)
    for spec in NODE_OPERATIONS:
        params = list(inspect.signature(getattr(NodeOperations, spec.name)).parameters)[1:]
        assert set(params) == spec.argument_names, spec.name


def test_the_control_socket_serves_declared_operations_only():
    server = ControlServer("/nonexistent/never-bound.sock", Echo())
    for spec in NODE_OPERATIONS:
        reply = server.dispatch({"op": spec.name, "kwargs": valid_kwargs(spec)})
        assert reply["ok"] and reply["result"]["op"] == spec.name, reply
        bad = server.dispatch({"op": spec.name, "kwargs": {"undeclared": 1}})
        assert bad["fields"]["undeclared"] == "Unknown argument."
    for name in NODE_INTERNAL | {"shutdown", "__init__", "dispatch"}:
        reply = server.dispatch({"op": name, "kwargs": {}})
        assert not reply["ok"] and reply["error"].startswith(f"unknown op {name!r}")


def test_the_node_worker_registers_one_task_per_declared_operation(monkeypatch):
    monkeypatch.setenv("NODE_NAME", "declared")  # the worker's queue is node.<NODE_NAME>
    from nodeworker import tasks
    from nodeworker.celery_app import app

    registered = {name for name in app.tasks if name.startswith(operations.TASK_PREFIX)}
    assert registered == set(operations.NODE_TASKS)
    assert set(tasks.TASKS) == set(OPERATIONS)


@pytest.mark.django_db
def test_the_api_exposes_exactly_the_declared_actions_with_their_roles(clients, sent_tasks):
    extra = {a.__name__ for a in NodeViewSet.get_extra_actions()} - {"rotate_token"}
    assert extra == set(PLANE_ACTIONS)
    assert NodeViewSet.action_roles == {n: s.role for n, s in PLANE_ACTIONS.items()}
    make_node("declared")
    for spec in PLANE_ACTIONS.values():
        url = reverse(f"node-{spec.name.replace('_', '-')}", kwargs={"name": "declared"})
        assert url == f"/api/nodes/declared/{spec.name}/"
        # An argument the declaration does not have is refused before anything is sent.
        refused = clients("admin").post(url, {"undeclared": 1}, format="json")
        assert refused.status_code == 400 and "undeclared" in refused.json(), spec.name
    assert sent_tasks == []
    response = clients("admin").post("/api/nodes/declared/not_declared/", {}, format="json")
    assert response.status_code == 404


@pytest.mark.django_db
def test_the_node_page_renders_its_buttons_from_the_declaration(clients):
    from django.test import Client

    browser = Client()
    browser.force_login(clients.users["viewer"])
    html = browser.get("/nodes/declared/").content.decode()
    found = re.search(r'<script id="node-operations" type="application/json">(.*?)</script>', html)
    assert found, "the page carries the declaration"
    assert json.loads(found.group(1)) == [s.as_page_dict() for s in PLANE_ACTIONS.values()]
    assert 'data-action="' not in html  # no hand-written buttons: node_actions.js makes them
