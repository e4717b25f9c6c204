"""Role checks for the API: reads need viewer, writes need admin, unless a viewset lowers the
role an action needs in ``action_roles`` (node actions: operator)."""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission

from controlplane.models import Node
from controlplane.roles import ADMIN, LEVELS, VIEWER, role_level


class RolePermission(BasePermission):
    message = "Your role does not allow this."

    def has_permission(self, request, view) -> bool:
        needed = getattr(view, "action_roles", {}).get(getattr(view, "action", None))
        if needed is None:
            needed = VIEWER if request.method in SAFE_METHODS else ADMIN
        return role_level(request.user) >= LEVELS[needed]


class IsNode(BasePermission):
    """Only a node token; which node's telemetry it may send is checked by the view."""

    message = "Telemetry ingest needs a node token."

    def has_permission(self, request, view) -> bool:
        return isinstance(request.auth, Node)
