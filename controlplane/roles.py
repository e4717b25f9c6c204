"""Roles are Django groups: viewer (read), operator (node actions), admin (policies, CRUD).
A superuser counts as admin; a node token (NodePrincipal) has no role outside telemetry ingest."""

from __future__ import annotations

VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"
LEVELS = {VIEWER: 1, OPERATOR: 2, ADMIN: 3}
ROLES = tuple(LEVELS)


def role_level(user) -> int:
    """0 for anonymous users, nodes and users in no role group; else the highest role's level."""
    if user is None or not user.is_authenticated or getattr(user, "is_node", False):
        return 0
    if user.is_superuser:
        return LEVELS[ADMIN]
    cached = getattr(user, "_liveupdate_role_level", None)
    if cached is None:
        names = user.groups.filter(name__in=ROLES).values_list("name", flat=True)
        cached = max((LEVELS[name] for name in names), default=0)
        user._liveupdate_role_level = cached
    return cached


def role_name(user) -> str | None:
    level = role_level(user)
    return next((name for name, value in LEVELS.items() if value == level), None)


def ensure_groups() -> list[str]:
    """Create the role groups (idempotent); returns the names created."""
    from django.contrib.auth.models import Group

    return [name for name in ROLES if Group.objects.get_or_create(name=name)[1]]
