"""What the control operations change and the node's loops read: the policy in force, the
placement it implies, and the base checkpoint being served. One instance per node; a policy
or a rebase replaces its fields as a whole (``adopt_policy``, ``checkpoint``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nodeworker import placement


@dataclass
class NodeState:
    policy: dict[str, Any]  # validated (protocol.validate_policy)
    topology: placement.Topology
    checkpoint: str  # the base model (dlrm_core.checkpoint)
    plan: placement.PlacementPlan = field(init=False)
    partitions: list[placement.PartitionResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.plan = self._plan()

    def adopt_policy(self, policy: dict[str, Any]) -> None:
        """The policy (validated) the node follows from now on, and its placement. The one
        place a policy takes effect on the node: where it would be persisted."""
        self.policy = policy
        self.plan = self._plan()

    @property
    def mode_paused(self) -> bool:
        """The policy's mode leaves the trainer idle (inference only)."""
        return bool(self.policy["mode"] != "liveupdate")

    def _plan(self) -> placement.PlacementPlan:
        return placement.plan_placement(
            self.topology,
            trainer_cores=int(self.policy["trainer_cores"]),
            trainer_share=float(self.policy["trainer_share"]),
        )

    def partition_report(self) -> list[dict[str, Any]]:
        return [{"mechanism": p.mechanism, "status": p.status, **p.detail} for p in self.partitions]
