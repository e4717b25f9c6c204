"""The fleet for Prometheus (GET /metrics), through the prometheus-client library: a collector
that reads the database at scrape time, so every server process answers the same numbers (no
process-local counters). Per node: liveness, the newest telemetry sample, its policy's limits
and mode, the time of its newest event of each kind and its open alerts.

docker/grafana/dashboards/liveupdate-fleet.json queries these names; the test suite checks that
every name it uses is exported here."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count, OuterRef, Q, Subquery
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from controlplane.models import Alert, Node, NodeEvent
from controlplane.services.telemetry import latest_samples
from nodeworker.protocol import telemetry as protocol_telemetry

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
PREFIX = "liveupdate_"
# The policy's limits the dashboards draw beside the node's values.
POLICY_LIMITS = {
    "sla_p99_ms": "The node's policy: P99 latency SLA in ms.",
    "memory_budget_pct": "The node's policy: LoRA memory budget in % of the tables.",
}


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, labels=labels)


# The kinds of liveupdate_node_last_event_timestamp_seconds: each node event kind, and restores
# (a "snapshot" event of a snapshot restored, the watchdog's rollbacks among them).
EVENT_FILTERS = {
    **{kind: Q(kind=kind) for kind in protocol_telemetry.EVENT_KINDS},
    "restore": Q(kind="snapshot", detail__has_key="restored"),
}


def _last_events(nodes: list[Node]) -> dict[tuple[str, str], float]:
    """(node name, event kind) -> Unix time of the node's newest event of that kind (one
    indexed query per kind)."""
    names = {node.pk: node.name for node in nodes}
    last: dict[tuple[str, str], float] = {}
    for kind, matches in EVENT_FILTERS.items():
        newest = NodeEvent.objects.filter(matches, node=OuterRef("pk")).order_by("-ts")
        rows = Node.objects.filter(pk__in=names).annotate(ts=Subquery(newest.values("ts")[:1]))
        for pk, ts in rows.values_list("pk", "ts"):
            if ts is not None:
                last[(names[pk], kind)] = ts.timestamp()
    return last


def _node_families(nodes: list[Node]) -> list[Metric]:
    up = _gauge(
        "node_up", "1 when the node is online (reported within the down threshold).", ["node"]
    )
    seen = _gauge(
        "node_last_seen_timestamp_seconds", "Unix time of the node's last telemetry.", ["node"]
    )
    info = _gauge(
        "node_info", "1 per node, labelled with its policy and mode.", ["node", "policy", "mode"]
    )
    limits = {f: _gauge(f"node_{f}", doc, ["node"]) for f, doc in POLICY_LIMITS.items()}
    for node in nodes:
        up.add_metric([node.name], node.status == Node.Status.ONLINE)
        if node.last_seen is not None:
            seen.add_metric([node.name], node.last_seen.timestamp())
        policy = node.policy
        info.add_metric(
            [node.name, policy.name if policy else "", policy.mode if policy else ""], 1
        )
        for field, family in limits.items():
            value = getattr(policy, field, None)
            if value is not None:
                family.add_metric([node.name], value)
    events = _gauge(
        "node_last_event_timestamp_seconds",
        "Unix time of the node's newest event of each kind (policy applied, sync landed, a "
        "snapshot restored, ...).",
        ["node", "kind"],
    )
    for (name, kind), ts in sorted(_last_events(nodes).items()):
        events.add_metric([name, kind], ts)
    return [up, seen, info, *limits.values(), events]


def _sample_families(nodes: list[Node]) -> list[Metric]:
    latest = latest_samples()
    metrics = {
        m: _gauge(f"node_{m}", f"The newest telemetry sample's {m}.", ["node"])
        for m in protocol_telemetry.SAMPLE_METRICS
    }
    throttle = _gauge(
        "node_trainer_throttle", "1 for the trainer's current throttle state.", ["node", "state"]
    )
    rank = _gauge("node_table_rank", "LoRA rank per embedding table.", ["node", "table"])
    table_bytes = _gauge(
        "node_table_memory_bytes", "LoRA memory per embedding table.", ["node", "table"]
    )
    for node in nodes:
        sample = latest.get(node.pk)
        if sample is None:
            continue
        for name, family in metrics.items():
            value = getattr(sample, name)
            if value is not None:
                family.add_metric([node.name], value)
        for state in protocol_telemetry.THROTTLE_STATES:
            throttle.add_metric([node.name, state], sample.throttle == state)
        for table, table_info in sorted(sample.tables.items()):
            rank.add_metric([node.name, table], table_info["rank"])
            table_bytes.add_metric([node.name, table], table_info["memory_bytes"])
    return [*metrics.values(), throttle, rank, table_bytes]


def _alert_families() -> list[Metric]:
    by_kind = _gauge("open_alerts", "Open alerts by kind.", ["kind"])
    by_node = _gauge("node_open_alerts", "Open alerts per node and kind.", ["node", "kind"])
    rows = Alert.objects.filter(resolved_at=None).values_list("node__name", "kind")
    counts = {(name, kind): n for name, kind, n in rows.annotate(n=Count("id"))}
    for kind in Alert.Kind.values:
        by_kind.add_metric([kind], sum(n for (_, k), n in counts.items() if k == kind))
    for (name, kind), n in sorted(counts.items()):
        by_node.add_metric([name, kind], n)
    return [by_kind, by_node]


class FleetCollector(Collector):
    """Reads the fleet from the database on every scrape."""

    def collect(self) -> Iterator[Metric]:
        nodes = list(Node.objects.select_related("policy").order_by("name"))
        yield from _node_families(nodes)
        yield from _sample_families(nodes)
        yield from _alert_families()


_registry = CollectorRegistry(auto_describe=False)  # this collector only: no process metrics
_registry.register(FleetCollector())


def exposition() -> bytes:
    return generate_latest(_registry)
