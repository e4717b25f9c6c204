"""API viewsets: declarative (queryset, serializer_class, filterset_class); logic lives in
controlplane.services. Roles: reads viewer, writes admin, node actions the role their
declaration gives (nodeworker.protocol.operations; their endpoints are made from it)."""

from __future__ import annotations

import dataclasses
import hmac

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import ProtectedError
from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane import roles, serializers
from controlplane.authentication import NodeTokenAuthentication
from controlplane.filters import (
    AlertFilter,
    CheckpointFilter,
    ExperimentRunFilter,
    NodeActionFilter,
    NodeEventFilter,
    NodeFilter,
    PolicyFilter,
    PolicyVersionFilter,
)
from controlplane.models import (
    Alert,
    ExperimentRun,
    ModelCheckpoint,
    Node,
    NodeAction,
    NodeEvent,
    Policy,
    PolicyVersion,
    RankEvent,
)
from controlplane.parsers import TelemetryJSONParser
from controlplane.permissions import IsNode, RolePermission
from controlplane.services import actions, ingest, policies, rollout
from controlplane.services import metrics as prometheus
from controlplane.services import telemetry as telemetry_service
from controlplane.services.policies import actor_of
from nodeworker import protocol
from nodeworker.protocol import operations
from nodeworker.protocol import telemetry as protocol_telemetry


class RoleViewSetMixin(APIView):
    permission_classes = [RolePermission]


class NodeViewSet(RoleViewSetMixin, viewsets.ModelViewSet):
    """Inference nodes. Create returns the node's token once; node actions need operator."""

    # No select_related("policy"): the serializer shows the policy's id, a column of the node;
    # the join and the policy's columns cost a read more CPU than the rest of its query.
    queryset = telemetry_service.with_latest_sample(Node.objects.all()).prefetch_related(
        "overrides"
    )
    serializer_class = serializers.NodeSerializer
    filterset_class = NodeFilter
    lookup_field = "name"
    lookup_value_regex = protocol.NODE_NAME_RE.pattern.strip("^$")
    action_roles = {name: spec.role for name, spec in operations.PLANE_ACTIONS.items()}

    @extend_schema(request=None, responses=serializers.NodeSerializer)
    @action(detail=True, methods=["post"])
    def rotate_token(self, request, name=None):
        node = self.get_object()
        node.raw_token = node.rotate_token()
        node.save(update_fields=["token_hash"])
        return Response(self.get_serializer(node).data)

    def request_operation(self, request, spec: operations.NodeOperationSpec) -> Response:
        """Record and send a declared operation; its body: the caller's arguments, or for an
        operation the plane fills in, the policy or checkpoint by id (REFERENCE_BODIES)."""
        if not isinstance(request.data, dict):
            raise ValidationError({"non_field_errors": ["Expected an object of arguments."]})
        errors: dict = {}
        references: dict = {}
        body_class = REFERENCE_BODIES.get(spec.name)
        body = body_class(data=request.data) if body_class is not None else None
        if body is not None:
            if body.is_valid():
                references = dict(body.validated_data)
            else:
                errors.update(body.errors)
        fields = body.fields if body is not None else {}
        arguments = {k: v for k, v in request.data.items() if k not in fields}
        _, problems = spec.validate(arguments, given_by="caller")
        errors.update({k: [v] for k, v in problems.items()})
        if errors:
            raise ValidationError(errors)
        try:
            record = actions.request_action(
                self.get_object(), spec.name, user=request.user, arguments=arguments, **references
            )
        except ValueError as exc:
            raise ValidationError({"non_field_errors": [str(exc)]}) from None
        code = status.HTTP_202_ACCEPTED if record.task_id else status.HTTP_503_SERVICE_UNAVAILABLE
        return Response(serializers.NodeActionSerializer(record).data, status=code)


# The operations whose policy or checkpoint the caller names by id (the plane fills them in).
REFERENCE_BODIES = {
    "apply_policy": serializers.ApplyPolicySerializer,
    "rebase": serializers.RebaseSerializer,
}


def _operation_endpoint(spec: operations.NodeOperationSpec):
    """``POST /api/nodes/<name>/<op>/`` for a declared plane action."""

    def endpoint(self, request, name=None):
        return self.request_operation(request, spec)

    endpoint.__name__ = spec.name
    endpoint.__doc__ = spec.summary
    body = REFERENCE_BODIES.get(spec.name) or (OpenApiTypes.OBJECT if spec.arguments else None)
    responses = {202: serializers.NodeActionSerializer, 503: serializers.NodeActionSerializer}
    documented = extend_schema(request=body, responses=responses)(endpoint)
    return action(detail=True, methods=["post"])(documented)


for _spec in operations.PLANE_ACTIONS.values():
    setattr(NodeViewSet, _spec.name, _operation_endpoint(_spec))


class PolicyViewSet(RoleViewSetMixin, viewsets.ModelViewSet):
    """Policies; every change is a new version with who, when and why (see policy-versions)."""

    queryset = Policy.objects.prefetch_related("nodes")
    serializer_class = serializers.PolicySerializer
    filterset_class = PolicyFilter

    @extend_schema(
        request=serializers.RevertPolicySerializer, responses=serializers.PolicySerializer
    )
    @action(detail=True, methods=["post"])
    def revert(self, request, pk=None):
        """A new version equal to version ``version`` (audited like any change); apply it to
        the nodes with their apply_policy action."""
        policy = self.get_object()
        body = serializers.RevertPolicySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            policies.revert_policy(
                policy,
                body.validated_data["version"],
                actor=actor_of(request.user),
                user=request.user,
            )
        except PolicyVersion.DoesNotExist:
            raise ValidationError({"version": ["This policy has no such version."]}) from None
        except DjangoValidationError as exc:
            raise ValidationError(exc.message_dict) from None
        return Response(self.get_serializer(policy).data)

    @extend_schema(responses={204: None, 409: OpenApiTypes.OBJECT})
    def destroy(self, request, *args, **kwargs):
        try:
            return super().destroy(request, *args, **kwargs)
        except ProtectedError:
            names = ", ".join(self.get_object().nodes.values_list("name", flat=True))
            return Response(
                {"detail": f"The policy is assigned to nodes: {names}."},
                status=status.HTTP_409_CONFLICT,
            )


class PolicyVersionViewSet(RoleViewSetMixin, viewsets.ReadOnlyModelViewSet):
    queryset = PolicyVersion.objects.select_related("policy")
    serializer_class = serializers.PolicyVersionSerializer
    filterset_class = PolicyVersionFilter


class CheckpointViewSet(RoleViewSetMixin, viewsets.ModelViewSet):
    """Base checkpoints; roll_out sends rebase to every node (Celery beat, rollout task)."""

    queryset = ModelCheckpoint.objects.all()
    serializer_class = serializers.CheckpointSerializer
    filterset_class = CheckpointFilter

    @extend_schema(request=None, responses=serializers.CheckpointSerializer)
    @action(detail=True, methods=["post"])
    def roll_out(self, request, pk=None):
        checkpoint = self.get_object()
        rollout.request_rollout(checkpoint)
        return Response(self.get_serializer(checkpoint).data, status=status.HTTP_202_ACCEPTED)


class ExperimentRunViewSet(RoleViewSetMixin, viewsets.ModelViewSet):
    """Runs of ``liveupdate experiment``: parameters and results.json (validated on import)."""

    queryset = ExperimentRun.objects.select_related("created_by")
    serializer_class = serializers.ExperimentRunSerializer
    filterset_class = ExperimentRunFilter


class AlertViewSet(RoleViewSetMixin, viewsets.ReadOnlyModelViewSet):
    queryset = Alert.objects.select_related("node", "acknowledged_by")
    serializer_class = serializers.AlertSerializer
    filterset_class = AlertFilter
    action_roles = {"acknowledge": roles.OPERATOR}

    @extend_schema(request=None, responses=serializers.AlertSerializer)
    @action(detail=True, methods=["post"])
    def acknowledge(self, request, pk=None):
        alert = self.get_object()
        alert.acknowledged_by, alert.acknowledged_at = request.user, timezone.now()
        alert.save(update_fields=["acknowledged_by", "acknowledged_at"])
        return Response(self.get_serializer(alert).data)


class NodeEventViewSet(RoleViewSetMixin, viewsets.ReadOnlyModelViewSet):
    """Events the nodes reported in telemetry (rank changes, prunes, QoS decisions, ...)."""

    queryset = NodeEvent.objects.select_related("node")
    serializer_class = serializers.NodeEventSerializer
    filterset_class = NodeEventFilter


class RankEventViewSet(NodeEventViewSet):
    """Rank changes of the dynamic-rank controller."""

    queryset = RankEvent.objects.select_related("node")


class NodeActionViewSet(RoleViewSetMixin, viewsets.ReadOnlyModelViewSet):
    """Node actions and their outcome; reading one refreshes it from the result backend."""

    queryset = NodeAction.objects.select_related("node", "requested_by")
    serializer_class = serializers.NodeActionSerializer
    filterset_class = NodeActionFilter

    def get_object(self):
        return actions.refresh_action(super().get_object())


class TelemetryViewSet(RoleViewSetMixin, viewsets.GenericViewSet):
    queryset = Node.objects.none()
    serializer_class = serializers.TelemetrySeriesSerializer
    pagination_class = None

    @extend_schema(
        parameters=[serializers.TelemetryQuerySerializer],
        responses=serializers.TelemetrySeriesSerializer,
    )
    def list(self, request):
        """A node's metrics over [start, end), averaged and maximised per time bucket."""
        query = serializers.TelemetryQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        q = query.validated_data
        try:
            data = telemetry_service.series(
                q["node"],
                q["start"],
                q["end"],
                q.get("metrics") or list(protocol_telemetry.SAMPLE_METRICS),
                q.get("bucket_s"),
                q["max_points"],
            )
        except telemetry_service.RangeError as exc:
            raise ValidationError({exc.field: [exc.message]}) from None
        return Response(data)

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses={
            200: serializers.IngestResultSerializer,
            400: OpenApiResponse(description="Field errors keyed by path, e.g. samples[1].qps"),
            403: OpenApiResponse(description="The batch names another node than the token's"),
            409: OpenApiResponse(description="Samples stored under the same key, other content"),
            413: OpenApiResponse(description="A body over protocol_telemetry.MAX_BATCH_BYTES"),
        },
    )
    @action(
        detail=False,
        methods=["post"],
        authentication_classes=[NodeTokenAuthentication],
        permission_classes=[IsNode],
        parser_classes=[TelemetryJSONParser],
    )
    def ingest(self, request):
        """A node's telemetry batch (``Authorization: Node <token>``); idempotent on
        (epoch, seq)."""
        try:
            result = ingest.ingest_batch(request.auth, request.data)
        except protocol_telemetry.TelemetryError as exc:
            errors = {path: [message] for path, message in exc.errors.items()}
            return Response(errors, status=status.HTTP_400_BAD_REQUEST)
        except ingest.WrongNode as exc:
            raise PermissionDenied(str(exc)) from None
        except ingest.Conflict as exc:
            body = {"detail": str(exc), "epoch": exc.epoch, "conflicts": exc.seqs}
            return Response(body, status=status.HTTP_409_CONFLICT)
        return Response(dataclasses.asdict(result))


class MeViewSet(viewsets.ViewSet):
    """Who is calling and with which role (the dashboard shows or hides controls by it)."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses=serializers.MeSerializer)
    def list(self, request):
        return Response({"username": str(request.user), "role": roles.role_name(request.user)})


def prometheus_metrics(request):
    """GET /metrics: Prometheus text exposition (bearer token when LIVEUPDATE_METRICS_TOKEN)."""
    expected = settings.LIVEUPDATE_METRICS_TOKEN
    if expected:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return HttpResponse("metrics token required\n", status=401, content_type="text/plain")
    return HttpResponse(prometheus.exposition(), content_type=prometheus.CONTENT_TYPE)
