"""REST API: declarative viewsets registered on one router (its root lists every endpoint)."""

from drf_spectacular.utils import extend_schema
from rest_framework import routers, serializers, viewsets
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from controlplane import health, views


class HealthSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    database = serializers.CharField()
    database_engine = serializers.CharField()
    channel_layer = serializers.CharField()
    channel_layer_backend = serializers.CharField()
    broker = serializers.CharField()
    broker_transport = serializers.CharField()


class HealthViewSet(viewsets.ViewSet):
    """Liveness and readiness of the control plane: database, channel layer and broker."""

    permission_classes = [AllowAny]

    @extend_schema(responses={200: HealthSerializer, 503: HealthSerializer})
    def list(self, request):
        report = health.check()
        return Response(report, status=200 if report["ok"] else 503)


router = routers.DefaultRouter()
router.register("health", HealthViewSet, basename="health")
router.register("me", views.MeViewSet, basename="me")
router.register("nodes", views.NodeViewSet)
router.register("policies", views.PolicyViewSet)
router.register("policy-versions", views.PolicyVersionViewSet)
router.register("checkpoints", views.CheckpointViewSet)
router.register("experiments", views.ExperimentRunViewSet)
router.register("alerts", views.AlertViewSet)
router.register("events", views.NodeEventViewSet, basename="nodeevent")
router.register("rank-events", views.RankEventViewSet, basename="rankevent")
router.register("actions", views.NodeActionViewSet)
router.register("telemetry", views.TelemetryViewSet, basename="telemetry")
