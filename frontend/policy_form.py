"""The policy editor's fields, grouped as an operator thinks of them. Bounds are shown from
nodeworker.protocol (the one definition the API validates with); the API's field errors are what
the editor reports."""

from __future__ import annotations

from dataclasses import dataclass

from nodeworker import protocol


@dataclass(frozen=True)
class Field:
    name: str
    label: str
    unit: str = ""
    help: str = ""
    choices: tuple[str, ...] = ()

    @property
    def bounds(self) -> str:
        bound = protocol.POLICY_BOUNDS.get(self.name)
        if bound is None:
            return ""
        return bound.describe() + (", or empty" if bound.nullable else "")

    @property
    def bound(self) -> protocol.Bound | None:
        """The API's bound of this number field (the page checks it before saving, too)."""
        return protocol.POLICY_BOUNDS.get(self.name)

    @property
    def integer(self) -> bool:
        bound = protocol.POLICY_BOUNDS.get(self.name)
        return bound is not None and bound.kind is int

    @property
    def overridable(self) -> bool:
        """The watchdog may override it on a node (the editor lists those overrides)."""
        return self.name in protocol.STRICTER

    @property
    def default(self):
        return protocol.POLICY_DEFAULTS.get(self.name, "")


@dataclass(frozen=True)
class Group:
    """A fieldset of the editor; ``modes`` are the policy modes it applies to (all when empty:
    a delta-sync or frozen node has no trainer, ranks or LoRA memory to configure)."""

    title: str
    fields: tuple[Field, ...]
    modes: tuple[str, ...] = ()


TRAINER_MODES = ("liveupdate",)

GROUPS: tuple[Group, ...] = (
    Group(
        "Mode",
        (
            Field(
                "mode",
                "Mode",
                help="liveupdate: local LoRA updates; delta_sync / frozen: baselines.",
                choices=protocol.MODES,
            ),
        ),
    ),
    Group(
        "Rank budget",
        (
            Field("r_min", "Minimum rank", "r"),
            Field("r_max", "Maximum rank", "r"),
            Field("tau", "Energy kept (tau)", "", "Share of singular-value energy the rank keeps."),
        ),
        TRAINER_MODES,
    ),
    Group(
        "Memory budget",
        (
            Field("memory_budget_pct", "Memory budget", "% of tables"),
            Field("prune_age_s", "Prune rows idle for", "s"),
            Field(
                "prune_action",
                "Pruned rows",
                help="fold: into the base row; discard: drop.",
                choices=protocol.PRUNE_ACTIONS,
            ),
        ),
        TRAINER_MODES,
    ),
    Group(
        "Training cluster",
        (
            Field(
                "rebase_period_s",
                "Delta rebase every",
                "s",
                "The cluster's changed rows and MLPs replace the node's; the other rows keep "
                "their corrections. 0: off.",
            ),
        ),
        TRAINER_MODES,
    ),
    Group(
        "Top MLP tuning",
        (
            Field(
                "lr_top",
                "Learning rate",
                "",
                "The node tunes its top MLP's last layers between the cluster's. 0: off (the "
                "measured default: it cost AUC on MovieLens and Criteo).",
            ),
            Field(
                "top_layers",
                "Last layers tuned",
                "layers",
                "At most the top MLP's depth, and a quarter of the memory budget. Measured on a "
                "drifting stream: the whole top MLP gained, the last layer alone did not.",
            ),
        ),
        TRAINER_MODES,
    ),
    Group(
        "QoS",
        (
            Field("trainer_cores", "Trainer cores", "cores", "0: the node picks idle cores."),
            Field("trainer_share", "Trainer share of cores", "fraction"),
            Field("max_trainer_duty", "Max trainer duty", "fraction"),
            Field("cache_partition_pct", "Cache partition (CAT)", "%", "0: none."),
            Field("bandwidth_partition_pct", "Bandwidth partition (MBA)", "%", "0: none."),
        ),
        TRAINER_MODES,
    ),
    Group(
        "SLA",
        (
            Field("sla_p99_ms", "Inference P99 SLA", "ms"),
            Field("auc_floor", "AUC floor", "", "Alert when the windowed AUC falls below."),
            Field(
                "rollback_after_intervals",
                "Automatic rollback after",
                "intervals",
                "AUC under the floor or the baseline node's for this many watchdog intervals: "
                "the last good snapshot is restored. 0: off.",
            ),
        ),
    ),
)
