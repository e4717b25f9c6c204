"""Filter sets of the API list endpoints (django-filter)."""

from __future__ import annotations

import django_filters as filters

from controlplane.models import (
    Alert,
    ExperimentRun,
    ModelCheckpoint,
    Node,
    NodeAction,
    NodeEvent,
    Policy,
    PolicyVersion,
)


class NodeFilter(filters.FilterSet):
    name = filters.CharFilter(lookup_expr="icontains")
    host = filters.CharFilter(lookup_expr="icontains")
    seen_after = filters.IsoDateTimeFilter(field_name="last_seen", lookup_expr="gte")

    class Meta:
        model = Node
        fields = ["name", "host", "status", "policy"]


class PolicyFilter(filters.FilterSet):
    name = filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Policy
        fields = ["name", "mode"]


class PolicyVersionFilter(filters.FilterSet):
    class Meta:
        model = PolicyVersion
        fields = ["policy", "actor"]


class CheckpointFilter(filters.FilterSet):
    name = filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = ModelCheckpoint
        fields = ["name", "rollout"]


class ExperimentRunFilter(filters.FilterSet):
    name = filters.CharFilter(lookup_expr="icontains")
    created_after = filters.IsoDateTimeFilter(field_name="created", lookup_expr="gte")
    created_before = filters.IsoDateTimeFilter(field_name="created", lookup_expr="lt")

    class Meta:
        model = ExperimentRun
        fields = ["name"]


class _NodeScoped(filters.FilterSet):
    node = filters.CharFilter(field_name="node__name", help_text="Node name.")


class AlertFilter(_NodeScoped):
    open = filters.BooleanFilter(field_name="resolved_at", lookup_expr="isnull")
    raised_after = filters.IsoDateTimeFilter(field_name="raised_at", lookup_expr="gte")

    class Meta:
        model = Alert
        fields = ["node", "kind", "severity", "open"]


class NodeEventFilter(_NodeScoped):
    since = filters.IsoDateTimeFilter(field_name="ts", lookup_expr="gte")
    until = filters.IsoDateTimeFilter(field_name="ts", lookup_expr="lt")

    class Meta:
        model = NodeEvent
        fields = ["node", "kind"]


class NodeActionFilter(_NodeScoped):
    class Meta:
        model = NodeAction
        fields = ["node", "action", "state", "actor"]
