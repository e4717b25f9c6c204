"""What the control operations change and the node's loops read: the policy in force, the
placement it implies, and the base checkpoint being served. One instance per node; a policy
or a rebase replaces its fields as a whole (``adopt_policy``, ``adopt_checkpoint``).

What the control plane applied (the policy and its version, the plane's automatic overrides
of it, the rebased checkpoint and its checksum) is persisted in the data dir (``applied.json``,
AppliedState) the moment it takes effect, so a restarted node comes back into it instead of its
start-up defaults, and is echoed in every telemetry batch (``running``), so the plane can see
what the node runs."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from nodeworker import placement, protocol
from nodeworker.protocol import telemetry as protocol_telemetry

log = logging.getLogger(__name__)

APPLIED_FILE = "applied.json"


@dataclass(frozen=True)
class AppliedState:
    """What the control plane applied last; None where the node runs its start-up value."""

    policy: protocol.Policy | None = None  # what people set (protocol.validate_policy)
    policy_version: int | None = None
    # field -> value set by the control plane's watchdog (protocol.validate_overrides)
    overrides: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None  # the rebased checkpoint's location
    checkpoint_checksum: str | None = None  # "sha256:<64 hex>" (protocol_telemetry.CHECKSUM_RE)

    @classmethod
    def load(cls, path: Path) -> AppliedState:
        """The state saved at ``path``; the start-up values (with a warning) when it is missing
        or unusable: a bad file must not keep the node from serving."""
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text())
            state = cls(**{**raw, "policy": None, "overrides": {}})
        except (OSError, ValueError, TypeError) as exc:
            log.warning(
                "%s is unreadable (%s); starting from the start-up policy and base", path, exc
            )
            return cls()
        return state._checked(path, raw.get("policy"), raw.get("overrides") or {})

    def _checked(self, path: Path, policy: Any, overrides: Any) -> AppliedState:
        """Each half kept only when it is still valid (a policy bound may have tightened):
        ``policy`` and ``overrides`` as saved (their wire form)."""
        state = self
        if policy is not None:
            clean, errors = (
                protocol.validate_policy(policy)
                if isinstance(policy, dict)
                else (None, {"policy": "Must be an object."})
            )
            kept, override_errors = protocol.validate_overrides(overrides)
            version_error = protocol_telemetry.policy_version_error(state.policy_version)
            if clean is None or kept is None or version_error:
                why = {**errors, **override_errors, "version": version_error}
                log.warning("%s: the saved policy is invalid (%s); not restored", path, why)
                state = replace(state, policy_version=None)
            else:
                state = replace(state, policy=clean, overrides=kept)
        checksum = state.checkpoint_checksum
        if state.checkpoint is not None and (
            not isinstance(state.checkpoint, str)
            or not Path(state.checkpoint).is_file()
            or (checksum is not None and not protocol_telemetry.CHECKSUM_RE.match(str(checksum)))
        ):
            log.warning("%s: the saved checkpoint %r is gone; not restored", path, state.checkpoint)
            state = replace(state, checkpoint=None, checkpoint_checksum=None)
        return state

    def save(self, path: Path) -> None:
        """Atomically: a crash while writing leaves the previous state."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    def policy_in_force(self) -> protocol.Policy | None:
        """The applied policy with its overrides (None: nothing applied)."""
        return None if self.policy is None else self.policy.with_overrides(self.overrides)

    def running(self) -> protocol_telemetry.RunningState:
        return protocol_telemetry.RunningState(self.policy_version, self.checkpoint_checksum)


@dataclass
class NodeState:
    policy: protocol.Policy  # in force: the applied policy with its overrides, or the start-up one
    topology: placement.Topology
    checkpoint: str  # the base model (dlrm_core.checkpoint)
    applied_path: Path  # where AppliedState is persisted
    applied: AppliedState = field(default_factory=AppliedState)
    plan: placement.PlacementPlan = field(init=False)
    partitions: list[placement.PartitionResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.plan = self._plan()

    def adopt_policy(
        self,
        policy: protocol.Policy,
        version: int | None = None,
        overrides: dict[str, float] | None = None,
    ) -> None:
        """The policy (with the plane's overrides of it) the node follows from now on, and its
        placement. The one place a policy takes effect on the node, persisted with its version
        and overrides."""
        applied = replace(
            self.applied, policy=policy, policy_version=version, overrides=dict(overrides or {})
        )
        self.policy = policy.with_overrides(applied.overrides)
        self.plan = self._plan()
        self._persist(applied)

    def adopt_checkpoint(self, location: str, checksum: str | None) -> None:
        """The base checkpoint served from now on (rebase), persisted with its checksum."""
        self.checkpoint = location
        self._persist(replace(self.applied, checkpoint=location, checkpoint_checksum=checksum))

    def _persist(self, applied: AppliedState) -> None:
        self.applied = applied  # in force whether or not it reaches the disk
        try:
            applied.save(self.applied_path)
        except OSError as exc:  # a full disk: the plane re-sends it after a restart
            log.error("could not persist what was applied to %s: %s", self.applied_path, exc)

    @property
    def mode_paused(self) -> bool:
        """The policy's mode leaves the trainer idle (inference only)."""
        return self.policy.mode != "liveupdate"

    def _plan(self) -> placement.PlacementPlan:
        return placement.plan_placement(
            self.topology,
            trainer_cores=self.policy.trainer_cores,
            trainer_share=self.policy.trainer_share,
        )

    def partition_report(self) -> list[dict[str, Any]]:
        return [{"mechanism": p.mechanism, "status": p.status, **p.detail} for p in self.partitions]
