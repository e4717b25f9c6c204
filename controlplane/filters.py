"""Filter sets of the API list endpoints (django-filter)."""

from __future__ import annotations

from datetime import UTC

import django_filters as filters
from django.core.exceptions import ValidationError
from django_filters.fields import IsoDateTimeField

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


class _UTCIsoDateTimeField(IsoDateTimeField):
    def to_python(self, value):
        value = super().to_python(value)
        if value is None:
            return value
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise ValidationError("Out of the supported date range.", code="invalid") from None


class UTCDateTimeFilter(filters.IsoDateTimeFilter):
    """An ISO 8601 time, queried in UTC: PostgreSQL refuses UTC offsets beyond +-15:59 (a 500
    otherwise), and the API allows any offset ISO 8601 does."""

    field_class = _UTCIsoDateTimeField


class NodeFilter(filters.FilterSet):
    name = filters.CharFilter(lookup_expr="icontains")
    host = filters.CharFilter(lookup_expr="icontains")
    seen_after = UTCDateTimeFilter(field_name="last_seen", lookup_expr="gte")

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
    created_after = UTCDateTimeFilter(field_name="created", lookup_expr="gte")
    created_before = UTCDateTimeFilter(field_name="created", lookup_expr="lt")

    class Meta:
        model = ExperimentRun
        fields = ["name"]


class _NodeScoped(filters.FilterSet):
    node = filters.CharFilter(field_name="node__name", help_text="Node name.")


class AlertFilter(_NodeScoped):
    open = filters.BooleanFilter(field_name="resolved_at", lookup_expr="isnull")
    raised_after = UTCDateTimeFilter(field_name="raised_at", lookup_expr="gte")

    class Meta:
        model = Alert
        fields = ["node", "kind", "severity", "open"]


class NodeEventFilter(_NodeScoped):
    since = UTCDateTimeFilter(field_name="ts", lookup_expr="gte")
    until = UTCDateTimeFilter(field_name="ts", lookup_expr="lt")

    class Meta:
        model = NodeEvent
        fields = ["node", "kind"]


class NodeActionFilter(_NodeScoped):
    class Meta:
        model = NodeAction
        fields = ["node", "action", "state", "actor"]
