"""Automatic overrides of a node's policy (issue 18): what the watchdog sets when a node breaks
its SLA, kept apart from the policy people set. The node runs the stricter of the two
(protocol.Policy.with_overrides); the watchdog lifts an override step by step once the node is
healthy again, or drops it at its expiry (controlplane.services.watchdog)."""

from __future__ import annotations

from django.db import models

from nodeworker import protocol


class PolicyOverride(models.Model):
    node = models.ForeignKey(
        "controlplane.Node", on_delete=models.CASCADE, related_name="overrides"
    )
    field = models.CharField(max_length=40, choices=[(f, f) for f in protocol.STRICTER])
    value = models.FloatField()
    reason = models.TextField()
    actor = models.CharField(max_length=150, default="watchdog")
    since = models.DateTimeField(help_text="When the override was first set.")
    expires_at = models.DateTimeField(help_text="When the watchdog drops it at the latest.")

    class Meta:
        ordering = ["node", "field"]
        constraints = [
            models.UniqueConstraint(fields=["node", "field"], name="policy_override_unique")
        ]

    def __str__(self) -> str:
        return f"{self.node_id}: {self.field} {self.value:g}"

    def as_dict(self) -> dict:
        """The override as the API and the live events show it."""
        return {
            "field": self.field,
            "value": self.value,
            "reason": self.reason,
            "actor": self.actor,
            "since": self.since.isoformat(),
            "expires_at": self.expires_at.isoformat(),
        }
