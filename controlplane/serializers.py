"""API serializers. Field rules come from the models' clean() (shared with the admin)."""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.serializers import ModelSerializer

from controlplane import roles
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
from controlplane.serializer_base import ModelCleanMixin
from controlplane.services import telemetry as telemetry_service
from controlplane.services.policies import actor_of, save_policy
from nodeworker import protocol
from nodeworker.protocol import telemetry as protocol_telemetry


def node_by_name() -> serializers.SlugRelatedField[Node]:
    """A node shown by its name (read-only)."""
    return serializers.SlugRelatedField(slug_field="name", read_only=True)


def user_by_name() -> serializers.SlugRelatedField[AbstractBaseUser]:
    """A user shown by their user name (read-only)."""
    return serializers.SlugRelatedField(slug_field="username", read_only=True)


class PolicySerializer(ModelCleanMixin, ModelSerializer):
    reason = serializers.CharField(
        write_only=True, required=False, allow_blank=True, help_text="Why: kept in the history."
    )
    nodes = serializers.ManyRelatedField(child_relation=node_by_name(), read_only=True)

    class Meta:
        model = Policy
        fields = [
            "id",
            "name",
            "description",
            *Policy.WIRE_FIELDS,
            "version",
            "updated",
            "nodes",
            "reason",
        ]
        read_only_fields = ["version", "updated"]

    def to_internal_value(self, data):
        # DRF's number fields take true/false as 1/0; the wire protocol refuses them.
        if isinstance(data, dict):
            flags = [k for k in protocol.POLICY_BOUNDS if isinstance(data.get(k), bool)]
            if flags:
                raise serializers.ValidationError({k: ["Must be a number."] for k in flags})
        return super().to_internal_value(data)

    def validate(self, attrs):
        reason = attrs.pop("reason", "")
        attrs = super().validate(attrs)
        attrs["reason"] = reason
        return attrs

    def _save(self, policy: Policy, validated: dict) -> Policy:
        reason = validated.pop("reason", "")
        for key, value in validated.items():
            setattr(policy, key, value)
        user = self.context["request"].user
        save_policy(policy, actor=actor_of(user), user=user, reason=reason)
        return policy

    def create(self, validated_data):
        return self._save(Policy(), validated_data)

    def update(self, instance, validated_data):
        return self._save(instance, validated_data)


class PolicyVersionSerializer(ModelSerializer):
    policy_name = serializers.CharField(source="policy.name", read_only=True)

    class Meta:
        model = PolicyVersion
        fields = [
            "id",
            "policy",
            "policy_name",
            "version",
            "values",
            "changes",
            "actor",
            "reason",
            "created",
        ]
        read_only_fields = fields


class NodeSerializer(ModelCleanMixin, ModelSerializer):
    policy = serializers.PrimaryKeyRelatedField(
        queryset=Policy.objects.all(), allow_null=True, required=False
    )
    token = serializers.SerializerMethodField(
        help_text="The raw node token: only in the reply to create and rotate_token."
    )
    latest = serializers.SerializerMethodField(
        help_text="The newest telemetry sample (the websocket's telemetry sample shape), or null."
    )
    overrides = serializers.SerializerMethodField(
        help_text="The watchdog's overrides of the applied policy (the node runs the stricter)."
    )

    class Meta:
        model = Node
        fields = [
            "id",
            "name",
            "host",
            "topology",
            "status",
            "last_seen",
            "policy",
            "applied_policy_version",
            "applied_policy",
            "applied_at",
            "overrides",
            "running_policy_version",
            "running_checkpoint",
            "running_reported_at",
            "created",
            "token",
            "latest",
        ]
        read_only_fields = [
            "status",
            "last_seen",
            "applied_policy_version",
            "applied_policy",
            "applied_at",
            "running_policy_version",
            "running_checkpoint",
            "running_reported_at",
            "created",
        ]

    @extend_schema_field(serializers.ListField(child=serializers.DictField()))
    def get_overrides(self, obj: Node) -> list[dict]:
        return [o.as_dict() for o in obj.overrides.all()] if obj.pk else []

    def get_token(self, obj: Node) -> str | None:
        return getattr(obj, "raw_token", None)

    @extend_schema_field(OpenApiTypes.OBJECT)
    def get_latest(self, obj: Node) -> dict | None:
        """What the dashboard shows before the first live event (rank, throttle, CPU included)."""
        if hasattr(obj, "latest_pk"):  # read by the viewset (with_latest_sample)
            return telemetry_service.latest_sample_of(obj)
        if not obj.pk:
            return None
        # a node just created or saved
        newest = obj.samples.filter(resolution_s=0).order_by("-received_at", "-id")
        row = newest.values(*telemetry_service.SAMPLE_PAYLOAD_FIELDS).first()
        return None if row is None else telemetry_service.sample_payload(row)

    def create(self, validated_data):
        node = Node(**validated_data)
        node.raw_token = node.rotate_token()
        node.save()
        return node


class NodeActionSerializer(ModelSerializer):
    node = node_by_name()
    requested_by = user_by_name()

    class Meta:
        model = NodeAction
        fields = [
            "id",
            "node",
            "action",
            "kwargs",
            "state",
            "task_id",
            "actor",
            "requested_by",
            "checkpoint",
            "result",
            "error",
            "created",
            "sent_at",
            "finished_at",
        ]
        read_only_fields = fields


class ApplyPolicySerializer(serializers.Serializer):
    policy = serializers.PrimaryKeyRelatedField(
        queryset=Policy.objects.all(),
        required=False,
        help_text="Assign this policy first; without it the node's current policy is applied.",
    )


class RevertPolicySerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1, max_value=2**31 - 1)


class RebaseSerializer(serializers.Serializer):
    checkpoint = serializers.PrimaryKeyRelatedField(queryset=ModelCheckpoint.objects.all())


class CheckpointSerializer(ModelCleanMixin, ModelSerializer):
    class Meta:
        model = ModelCheckpoint
        fields = [
            "id",
            "name",
            "location",
            "checksum",
            "size_bytes",
            "notes",
            "rollout",
            "rollout_requested_at",
            "rollout_completed_at",
            "created",
        ]
        read_only_fields = ["rollout", "rollout_requested_at", "rollout_completed_at", "created"]


class ExperimentRunSerializer(ModelCleanMixin, ModelSerializer):
    created_by = user_by_name()
    dataset = serializers.CharField(source="dataset_name", read_only=True)

    class Meta:
        model = ExperimentRun
        fields = [
            "id",
            "name",
            "dataset",
            "parameters",
            "results",
            "notes",
            "created_by",
            "created",
        ]
        read_only_fields = ["created_by", "created"]

    def create(self, validated_data):
        with transaction.atomic():
            return ExperimentRun.objects.create(
                created_by=self.context["request"].user, **validated_data
            )


class AlertSerializer(ModelSerializer):
    node = node_by_name()
    acknowledged_by = user_by_name()
    open = serializers.BooleanField(source="is_open", read_only=True)

    class Meta:
        model = Alert
        fields = [
            "id",
            "node",
            "kind",
            "severity",
            "message",
            "details",
            "open",
            "raised_at",
            "resolved_at",
            "acknowledged_by",
            "acknowledged_at",
        ]
        read_only_fields = fields


class NodeEventSerializer(ModelSerializer):
    node = node_by_name()

    class Meta:
        model = NodeEvent
        fields = ["id", "node", "seq", "index", "kind", "ts", "detail"]
        read_only_fields = fields


class NodeNameField(serializers.SlugRelatedField):
    """A node by name; a value that cannot be a name (a NUL byte would be a database error)
    is refused before any query."""

    def to_internal_value(self, data):
        if not isinstance(data, str) or not protocol.NODE_NAME_RE.match(data):
            raise serializers.ValidationError("Not a node name (lowercase letters, digits, '-').")
        return super().to_internal_value(data)


class TelemetryQuerySerializer(serializers.Serializer):
    node = NodeNameField(slug_field="name", queryset=Node.objects.all())
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    bucket_s = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=86400,
        help_text="Bucket width in seconds (a 400 if the range would touch more than max_points "
        "buckets); default: about the range / max_points, so that at most max_points come back.",
    )
    max_points = serializers.IntegerField(
        required=False,
        min_value=2,
        max_value=telemetry_service.MAX_POINTS,
        default=telemetry_service.MAX_POINTS,
        help_text="The most buckets to return, e.g. a chart's width in pixels.",
    )
    metrics = serializers.CharField(
        required=False,
        help_text="Comma-separated metric names (default: all).",
    )

    def validate_metrics(self, value: str) -> list[str]:
        names = [m.strip() for m in value.split(",") if m.strip()]
        unknown = [m for m in names if m not in protocol_telemetry.SAMPLE_METRICS]
        if unknown or not names:
            raise serializers.ValidationError(
                f"Unknown metric(s) {', '.join(unknown) or '(none)'}; "
                f"choose from {', '.join(protocol_telemetry.SAMPLE_METRICS)}."
            )
        return names


class TelemetrySeriesSerializer(serializers.Serializer):
    """A range as columns: entry i of ``t``, ``n`` and of every list in ``avg`` and ``max`` is
    time bucket i."""

    node = serializers.CharField()
    start = serializers.FloatField()
    end = serializers.FloatField()
    bucket_s = serializers.IntegerField()
    metrics = serializers.ListField(child=serializers.CharField())
    t = serializers.ListField(
        child=serializers.IntegerField(), help_text="Bucket starts, Unix seconds, ascending."
    )
    n = serializers.ListField(child=serializers.IntegerField(), help_text="Samples per bucket.")
    avg = serializers.DictField(
        child=serializers.ListField(child=serializers.FloatField(allow_null=True)),
        help_text="Metric -> its mean per bucket (null: no sample in the bucket had it).",
    )
    max = serializers.DictField(
        child=serializers.ListField(child=serializers.FloatField(allow_null=True)),
        help_text="Metric -> its maximum per bucket.",
    )


class IngestResultSerializer(serializers.Serializer):
    accepted = serializers.IntegerField(help_text="New samples stored.")
    duplicate = serializers.IntegerField(help_text="Samples already stored (same node and seq).")
    events = serializers.IntegerField(help_text="Node events stored with the new samples.")


class MeSerializer(serializers.Serializer):
    username = serializers.CharField()
    role = serializers.ChoiceField(choices=roles.ROLES, allow_null=True)
