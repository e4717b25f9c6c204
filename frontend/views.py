"""Dashboard pages. Views only render templates: every number on a page comes from the REST API
and the websocket, fetched by the page's script with the operator's session."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from frontend.policy_form import GROUPS
from nodeworker.protocol import NODE_NAME_RE
from nodeworker.protocol.operations import PLANE_ACTIONS

NODE_NAME_PATTERN = NODE_NAME_RE.pattern.strip("^$")


@login_required
def dashboard(request):
    return render(request, "frontend/dashboard.html", {"page": "fleet"})


@login_required
def node_detail(request, name: str):
    operations = [spec.as_page_dict() for spec in PLANE_ACTIONS.values()]
    context = {"page": "fleet", "node_name": name, "operations": operations}
    return render(request, "frontend/node.html", context)


@login_required
def policies(request):
    return render(request, "frontend/policies.html", {"page": "policies", "groups": GROUPS})


@login_required
def experiments(request):
    return render(request, "frontend/experiments.html", {"page": "experiments"})
