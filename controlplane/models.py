"""The control plane's data. Validation lives on the models (clean()), so the REST API and the
Django admin report the same field errors; policy and telemetry rules come from
nodeworker.protocol, the one definition shared with the nodes."""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

from controlplane.experiment_run import ExperimentRun as ExperimentRun  # all models from here
from controlplane.tokens import hash_token, new_token
from nodeworker import protocol
from nodeworker.protocol import telemetry as protocol_telemetry


class Policy(models.Model):
    """What a node runs (mode, rank and memory budgets, pruning, QoS, SLA, rebase, top tuning).
    Every wire field (protocol.POLICY_DEFAULTS) is a column; ``version`` counts saved changes,
    each recorded as a PolicyVersion (see controlplane.services.policies.save_policy)."""

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    mode = models.CharField(
        max_length=20,
        choices=[(m, m) for m in protocol.MODES],
        default=protocol.POLICY_DEFAULTS["mode"],
    )
    r_min = models.IntegerField(default=protocol.POLICY_DEFAULTS["r_min"])
    r_max = models.IntegerField(default=protocol.POLICY_DEFAULTS["r_max"])
    memory_budget_pct = models.FloatField(
        default=protocol.POLICY_DEFAULTS["memory_budget_pct"],
        help_text="LoRA state as % of the embedding tables' memory.",
    )
    tau = models.FloatField(
        default=protocol.POLICY_DEFAULTS["tau"],
        help_text="Energy share of singular values the rank keeps.",
    )
    prune_age_s = models.FloatField(default=protocol.POLICY_DEFAULTS["prune_age_s"])
    prune_action = models.CharField(
        max_length=10,
        choices=[(a, a) for a in protocol.PRUNE_ACTIONS],
        default=protocol.POLICY_DEFAULTS["prune_action"],
    )
    trainer_cores = models.IntegerField(
        default=protocol.POLICY_DEFAULTS["trainer_cores"],
        help_text="0: the node picks its idle cores.",
    )
    trainer_share = models.FloatField(default=protocol.POLICY_DEFAULTS["trainer_share"])
    cache_partition_pct = models.IntegerField(
        default=protocol.POLICY_DEFAULTS["cache_partition_pct"]
    )
    bandwidth_partition_pct = models.IntegerField(
        default=protocol.POLICY_DEFAULTS["bandwidth_partition_pct"]
    )
    max_trainer_duty = models.FloatField(default=protocol.POLICY_DEFAULTS["max_trainer_duty"])
    sla_p99_ms = models.FloatField(default=protocol.POLICY_DEFAULTS["sla_p99_ms"])
    auc_floor = models.FloatField(null=True, blank=True, default=None)
    rollback_after_intervals = models.IntegerField(
        default=protocol.POLICY_DEFAULTS["rollback_after_intervals"],
        help_text="AUC under the floor or the baseline for this many watchdog intervals: the "
        "node's last good snapshot is restored. 0: off.",
    )
    rebase_period_s = models.FloatField(
        default=protocol.POLICY_DEFAULTS["rebase_period_s"],
        help_text="Every this many seconds the training cluster sends the rows it changed and "
        "its MLPs; the node keeps its other rows' corrections. 0: off.",
    )
    lr_top = models.FloatField(default=protocol.POLICY_DEFAULTS["lr_top"])  # 0: off
    top_layers = models.IntegerField(default=protocol.POLICY_DEFAULTS["top_layers"])
    version = models.PositiveIntegerField(default=0, editable=False)
    updated = models.DateTimeField(auto_now=True)

    WIRE_FIELDS = tuple(protocol.POLICY_DEFAULTS)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "policies"

    def __str__(self) -> str:
        return self.name

    def values(self) -> dict:
        """The wire fields as saved (PolicyVersion.values)."""
        return {name: getattr(self, name) for name in self.WIRE_FIELDS}

    def node_policy(self) -> protocol.Policy:
        """The policy a node is sent; ValidationError (per field) when it is not valid."""
        policy, errors = protocol.validate_policy(self.values())
        if policy is None:
            raise ValidationError(errors)
        return policy

    def clean(self) -> None:
        self.node_policy()


class PolicyVersion(models.Model):
    """One saved state of a policy: who changed what, when and why."""

    policy = models.ForeignKey(Policy, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    values = models.JSONField()
    changes = models.JSONField(default=dict, help_text="field -> [old, new]")
    actor = models.CharField(max_length=150, help_text="user:<name> or system")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    reason = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["policy", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["policy", "version"], name="policy_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.policy} v{self.version}"


class Node(models.Model):
    class Status(models.TextChoices):
        REGISTERED = "registered"  # created, never reported
        ONLINE = "online"
        DOWN = "down"  # silent for longer than LIVEUPDATE_NODE_DOWN_S

    name = models.CharField(
        max_length=63,
        unique=True,
        validators=[
            RegexValidator(protocol.NODE_NAME_RE, "Lowercase letters, digits and '-' (at most 63).")
        ],
    )
    host = models.CharField(max_length=255, blank=True)
    topology = models.JSONField(default=dict, blank=True, help_text="CPU/NUMA layout reported.")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.REGISTERED)
    last_seen = models.DateTimeField(null=True, blank=True)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    policy = models.ForeignKey(
        Policy, null=True, blank=True, on_delete=models.PROTECT, related_name="nodes"
    )
    applied_policy_version = models.PositiveIntegerField(null=True, blank=True, editable=False)
    # What people applied last, as sent (apply_policy's policy, policy_name and version; no
    # overrides): the watchdog judges it and re-sends it, never a saved but unapplied edit.
    applied_policy = models.JSONField(null=True, blank=True, editable=False)
    # When the policy or an override last changed on the node: the watchdog judges only the
    # telemetry of later intervals.
    applied_at = models.DateTimeField(null=True, blank=True, editable=False)
    # What the node reports it runs (protocol_telemetry.RunningState); services.desired
    # re-sends the rest.
    running_policy_version = models.BigIntegerField(null=True, blank=True, editable=False)
    running_checkpoint = models.CharField(max_length=71, blank=True, editable=False)
    running_reported_at = models.DateTimeField(null=True, blank=True, editable=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        if not self.token_hash:
            self.rotate_token()  # never stored without one; the raw value is shown by callers
        super().save(*args, **kwargs)

    def clean(self) -> None:
        if not isinstance(self.topology, dict):
            raise ValidationError({"topology": "Must be a JSON object."})
        problem = protocol_telemetry.json_value_error(self.topology)
        if problem:
            raise ValidationError({"topology": problem})

    def rotate_token(self) -> str:
        """A new token: the raw value is returned once and only its hash is kept."""
        raw = new_token()
        self.token_hash = hash_token(raw)
        return raw


class NodeAction(models.Model):
    """A control task sent to a node's queue, and its outcome when the node reports it."""

    class State(models.TextChoices):
        REQUESTED = "requested"
        SENT = "sent"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="actions")
    # One of nodeworker.protocol.operations.PLANE_ACTIONS (checked by services.actions): no
    # choices here, so that declaring an operation needs no migration.
    action = models.CharField(max_length=20)
    kwargs = models.JSONField(default=dict)
    state = models.CharField(max_length=10, choices=State.choices, default=State.REQUESTED)
    task_id = models.CharField(max_length=64, blank=True)
    actor = models.CharField(max_length=150)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    checkpoint = models.ForeignKey(
        "ModelCheckpoint", null=True, blank=True, on_delete=models.SET_NULL
    )
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["state", "created"])]

    def __str__(self) -> str:
        return f"{self.action} on {self.node} ({self.state})"


class ModelCheckpoint(models.Model):
    """A base model from the training cluster that nodes may rebase onto."""

    class Rollout(models.TextChoices):
        NONE = "none"
        PENDING = "pending"  # the beat task sends rebase to every node that has not had it
        DONE = "done"

    name = models.CharField(max_length=100, unique=True)
    location = models.CharField(max_length=1024, help_text="Path or URL the nodes load it from.")
    checksum = models.CharField(
        max_length=71,
        validators=[
            RegexValidator(
                protocol_telemetry.CHECKSUM_RE, "Must look like sha256:<64 lowercase hex>."
            )
        ],
    )
    size_bytes = models.BigIntegerField(null=True, blank=True, validators=[MinValueValidator(0)])
    notes = models.TextField(blank=True)
    rollout = models.CharField(max_length=10, choices=Rollout.choices, default=Rollout.NONE)
    rollout_requested_at = models.DateTimeField(null=True, blank=True)
    rollout_completed_at = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return self.name

    def wire(self) -> dict:
        return {"name": self.name, "location": self.location, "checksum": self.checksum}


class TelemetrySample(models.Model):
    """One second of a node (resolution_s == 0), or the mean of a downsampled time bucket."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="samples")
    epoch = models.BigIntegerField(default=0, help_text="the node's incarnation (protocol)")
    seq = models.BigIntegerField()
    ts = models.DateTimeField()
    # The metrics of protocol_telemetry.SAMPLE_METRICS (a unit test keeps the two in step).
    qps = models.FloatField()
    p50_ms = models.FloatField(null=True)
    p95_ms = models.FloatField(null=True)
    p99_ms = models.FloatField(null=True)
    auc = models.FloatField(null=True)
    logloss = models.FloatField(null=True)
    memory_overhead_bytes = models.FloatField()
    memory_overhead_pct = models.FloatField()
    freshness_lag_s = models.FloatField(null=True)
    trainer_samples_per_s = models.FloatField()
    trainer_duty = models.FloatField()
    skipped_batches = models.FloatField(null=True)
    dropped_samples = models.FloatField(null=True)
    throttle = models.CharField(
        max_length=10, choices=[(t, t) for t in protocol_telemetry.THROTTLE_STATES]
    )
    tables = models.JSONField(default=dict)
    cpu_per_core = models.JSONField(default=list)
    resolution_s = models.PositiveIntegerField(default=0, help_text="0: raw; else bucket width")
    n_samples = models.PositiveIntegerField(default=1)
    received_at = models.DateTimeField(auto_now_add=True)
    # Of the sample as posted (ingest.content_hash); null for downsampled rows. A resent sample
    # with the same (node, epoch, seq) and another hash is a conflict, never a silent duplicate.
    content_hash = models.BigIntegerField(null=True, editable=False)

    METRICS = tuple(protocol_telemetry.SAMPLE_METRICS)

    class Meta:
        ordering = ["node", "ts"]
        constraints = [
            models.UniqueConstraint(
                fields=["node", "epoch", "seq"], name="telemetry_node_epoch_seq_unique"
            )
        ]
        indexes = [
            models.Index(fields=["node", "ts"], name="telemetry_node_ts"),
            # "latest" is the newest raw sample received, not the newest by the node's clock: the
            # whole ORDER BY of its lookup, so the plan is a backward scan stopping at the first
            # row even while the statistics lag behind a burst of ingest (with (node,
            # received_at) PostgreSQL then sorted every sample of the node: 15 ms for 14,500)
            models.Index(
                fields=["node", "resolution_s", "received_at", "id"],
                name="telemetry_node_newest",
            ),
            models.Index(fields=["resolution_s", "ts"], name="telemetry_resolution_ts"),
        ]

    def __str__(self) -> str:
        return f"{self.node_id}#{self.seq}"


class NodeEvent(models.Model):
    """An event a node reported inside a telemetry sample (rank change, prune, QoS decision...)."""

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="events")
    epoch = models.BigIntegerField(default=0, help_text="epoch of the sample that carried it")
    seq = models.BigIntegerField(help_text="seq of the sample that carried it")
    index = models.PositiveIntegerField(help_text="position in that sample's events")
    kind = models.CharField(max_length=20, choices=[(k, k) for k in protocol_telemetry.EVENT_KINDS])
    ts = models.DateTimeField()
    detail = models.JSONField(default=dict)

    class Meta:
        ordering = ["-ts"]
        constraints = [
            models.UniqueConstraint(
                fields=["node", "epoch", "seq", "index"], name="node_event_epoch_unique"
            )
        ]
        indexes = [models.Index(fields=["kind", "node", "ts"], name="node_event_kind_ts")]

    def __str__(self) -> str:
        return f"{self.kind} on {self.node_id} at {self.ts}"


class RankEventManager(models.Manager):
    def get_queryset(self):
        return super().get_queryset().filter(kind="rank_change")


class RankEvent(NodeEvent):
    """The rank changes of the dynamic-rank controller (NodeEvent rows of kind rank_change)."""

    objects: ClassVar[RankEventManager] = RankEventManager()

    class Meta:
        proxy = True
        ordering = ["-ts"]


class Alert(models.Model):
    class Kind(models.TextChoices):
        SLA_VIOLATION = "sla_violation"
        NODE_DOWN = "node_down"
        AUC_DROP = "auc_drop"
        ROLLBACK = "rollback"  # the watchdog restored a node's last good snapshot

    class Severity(models.TextChoices):
        WARNING = "warning"
        CRITICAL = "critical"

    node = models.ForeignKey(Node, on_delete=models.CASCADE, related_name="alerts")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    severity = models.CharField(max_length=10, choices=Severity.choices)
    message = models.TextField()
    details = models.JSONField(default=dict)
    raised_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-raised_at"]
        constraints = [
            # At most one open alert of a kind per node: the watchdog updates it instead.
            models.UniqueConstraint(
                fields=["node", "kind"],
                condition=Q(resolved_at__isnull=True),
                name="alert_one_open_per_node_kind",
            )
        ]
        indexes = [models.Index(fields=["resolved_at", "raised_at"], name="alert_open_raised")]

    def __str__(self) -> str:
        return f"{self.kind} on {self.node} ({'open' if self.is_open else 'resolved'})"

    @property
    def is_open(self) -> bool:
        return self.resolved_at is None


# The watchdog's automatic overrides of a node's policy: a model of its own module.
from controlplane.overrides import PolicyOverride  # noqa: E402, F401
