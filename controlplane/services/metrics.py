"""Prometheus text exposition (format 0.0.4) of the fleet: per-node gauges of the newest
telemetry sample, node liveness and open alerts. Written by hand: it is a few lines of text."""

from __future__ import annotations

from django.db.models import Count

from controlplane.models import Alert, Node
from controlplane.services.telemetry import latest_samples
from nodeworker.protocol import telemetry as protocol_telemetry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_label(str(v))}"' for k, v in labels.items()) + "}"


class _Family:
    def __init__(self, name: str, help_text: str):
        self.name, self.help_text = f"liveupdate_{name}", help_text
        self.lines: list[str] = []

    def add(self, value: float, **labels: str) -> None:
        self.lines.append(f"{self.name}{_labels(**labels)} {float(value)!r}")

    def render(self) -> str:
        head = f"# HELP {self.name} {self.help_text}\n# TYPE {self.name} gauge\n"
        return head + "".join(line + "\n" for line in self.lines)


def exposition() -> str:
    nodes = list(Node.objects.all())
    latest = latest_samples()
    up = _Family("node_up", "1 when the node is online (reported within the down threshold).")
    seen = _Family("node_last_seen_timestamp_seconds", "Unix time of the node's last telemetry.")
    metrics = {
        m: _Family(f"node_{m}", f"The newest telemetry sample's {m}.")
        for m in protocol_telemetry.SAMPLE_METRICS
    }
    throttle = _Family("node_trainer_throttle", "1 for the trainer's current throttle state.")
    rank = _Family("node_table_rank", "LoRA rank per embedding table.")
    table_bytes = _Family("node_table_memory_bytes", "LoRA memory per embedding table.")
    for node in nodes:
        up.add(node.status == Node.Status.ONLINE, node=node.name)
        if node.last_seen is not None:
            seen.add(node.last_seen.timestamp(), node=node.name)
        sample = latest.get(node.pk)
        if sample is None:
            continue
        for name, family in metrics.items():
            value = getattr(sample, name)
            if value is not None:
                family.add(value, node=node.name)
        for state in protocol_telemetry.THROTTLE_STATES:
            throttle.add(sample.throttle == state, node=node.name, state=state)
        for table, info in sorted(sample.tables.items()):
            rank.add(info["rank"], node=node.name, table=table)
            table_bytes.add(info["memory_bytes"], node=node.name, table=table)
    alerts = _Family("open_alerts", "Open alerts by kind.")
    counts = dict(
        Alert.objects.filter(resolved_at=None).values_list("kind").annotate(n=Count("id"))
    )
    for kind in Alert.Kind.values:
        alerts.add(counts.get(kind, 0), kind=kind)
    families = [up, seen, *metrics.values(), throttle, rank, table_bytes, alerts]
    return "".join(f.render() for f in families)
