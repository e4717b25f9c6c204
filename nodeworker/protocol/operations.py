"""The node operations, declared once: each one's name, arguments (with their bounds), the role
an operator needs, the confirmation the dashboard asks for and the node modes that offer it.

Everything else is derived from NODE_OPERATIONS:

- the node's control socket serves exactly these names and checks their arguments here before
  the runtime sees them (nodeworker.control_socket);
- the node worker registers one Celery task per operation, named ``task_name(op)``, that
  forwards it over the socket (nodeworker.tasks); the control plane sends it to ``node.<name>``;
- an operation with a ``role`` is a control-plane action: ``POST /api/nodes/<name>/<op>/`` for
  that role, its body checked by the same arguments, recorded as a NodeAction
  (controlplane.views, controlplane.services.actions); without a role it is the node's own
  (sent by the training cluster or a local tool), never exposed by the plane;
- the node page renders a button for each action with ``button=True`` from this list (passed
  to the page as JSON: frontend.views, node_actions.js), with its confirmation and modes.

Adding an operation therefore touches three files: this declaration, its method on
nodeworker.node_operations.NodeOperations (same name, the declared arguments as keywords), and
its test. (An argument the plane fills in from a record named by id, like apply_policy's policy
or rebase's checkpoint, also needs that id's serializer in controlplane.views.REFERENCE_BODIES
and its filling in controlplane.services.actions; plain arguments need neither.) Imports
nothing heavy (stdlib only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from nodeworker.protocol import (
    MODES,
    Bound,
    check_number,
    validate_overrides,
    validate_policy,
)
from nodeworker.protocol.telemetry import EPOCH_BOUND

TASK_PREFIX = "nodeworker."
SNAPSHOT_NAME_RE = re.compile(r"^(base|last_good|snap-[0-9]{1,20})$")
TRAINING_MODES = ("liveupdate",)  # the modes with a trainer (pause, snapshots, restore)

# What an argument's ``kind`` admits on the wire, besides None for an optional one.
KINDS = ("int", "float", "bool", "str", "object", "policy", "overrides", "checkpoint")


@dataclass(frozen=True)
class Argument:
    """One keyword argument. ``by_plane``: the control plane fills it in (the node's policy, a
    registered checkpoint); an API caller names the policy or checkpoint by id instead."""

    name: str
    kind: str
    required: bool = False
    bound: Bound | None = None  # int and float
    pattern: re.Pattern[str] | None = None  # str: a full match
    max_length: int = 200  # str
    by_plane: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"argument {self.name}: kind {self.kind!r} is not one of {KINDS}")

    def error(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable for this argument (None: it is)."""
        if value is None:
            return "This argument is required." if self.required else None
        if self.kind in ("int", "float"):
            return check_number(value, self.bound or Bound(float))
        if self.kind == "bool":
            return None if isinstance(value, bool) else "Must be true or false."
        if self.kind == "str":
            if not isinstance(value, str) or len(value) > self.max_length:
                return f"Must be a text of at most {self.max_length} characters."
            if self.pattern is not None and not self.pattern.match(value):
                return f"Must match {self.pattern.pattern}."
            return None
        if not isinstance(value, dict):
            return "Must be an object."
        if self.kind == "checkpoint" and not isinstance(value.get("location"), str):
            return "Must be {name, location, checksum}."
        if self.kind == "object" and not value:
            return "Must be a non-empty object."
        # an object's content is the runtime's to check (policy, overrides: the protocol's)
        return None

    def clean(self, value: Any) -> tuple[Any, dict[str, str]]:
        """(the value as the runtime takes it, field errors keyed by this argument's path)."""
        problem = self.error(value)
        if problem:
            return value, {self.name: problem}
        if self.kind == "policy" and value is not None:  # on the wire: Policy.wire()
            policy, errors = validate_policy(value)
            wire = policy.wire() if policy is not None else value
            return wire, {f"{self.name}.{k}": v for k, v in errors.items()}
        if self.kind == "overrides" and value is not None:
            kept, errors = validate_overrides(value)
            return kept, {f"{self.name}.{k}": v for k, v in errors.items()}
        if self.kind in ("int", "float") and value is not None:
            return (int if self.kind == "int" else float)(value), {}
        return value, {}


@dataclass(frozen=True)
class NodeOperationSpec:
    name: str
    summary: str
    arguments: tuple[Argument, ...] = ()
    role: str | None = None  # "viewer" / "operator" / "admin": a plane action; None: node-only
    label: str = ""  # the button's text
    button: bool = False  # a plain button on the node page (no arguments to choose)
    confirm: str = ""  # the question asked first ("{node}" is the node's name); "": none
    confirm_detail: str = ""
    modes: tuple[str, ...] = MODES  # the policy modes whose nodes offer it
    argument_names: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "argument_names", frozenset(a.name for a in self.arguments))

    @property
    def task(self) -> str:
        return task_name(self.name)

    def validate(self, kwargs: Any, given_by: str = "any") -> tuple[dict[str, Any], dict[str, str]]:
        """(clean keyword arguments, field errors). ``given_by="caller"``: only the arguments
        an API caller gives (not the ones the plane fills in) are accepted."""
        if not isinstance(kwargs, dict):
            return {}, {"non_field_errors": "Expected an object of arguments."}
        allowed = [a for a in self.arguments if given_by == "any" or not a.by_plane]
        errors = {k: "Unknown argument." for k in kwargs if k not in {a.name for a in allowed}}
        clean: dict[str, Any] = {}
        for argument in allowed:
            if argument.name in kwargs or argument.required:
                value, problems = argument.clean(kwargs.get(argument.name))
                errors.update(problems)
                clean[argument.name] = value
        return clean, errors

    def as_page_dict(self) -> dict[str, Any]:
        """What the node page renders its button from."""
        return {
            "name": self.name,
            "label": self.label or self.name.replace("_", " "),
            "role": self.role,
            "button": self.button,
            "confirm": self.confirm,
            "confirm_detail": self.confirm_detail,
            "modes": list(self.modes),
        }


def task_name(op: str) -> str:
    return f"{TASK_PREFIX}{op}"


_NULLABLE_TIME = Bound(float, 0.0, 1e11, nullable=True)
_TIME = Bound(float, 0.0, 1e11)
SNAPSHOT_ID = Bound(int, 0, 2**53 - 1)  # the training cluster's snapshot of a delta rebase

NODE_OPERATIONS: tuple[NodeOperationSpec, ...] = (
    NodeOperationSpec(
        "apply_policy",
        "Adopt the policy (the node's assigned one, or the one named in the body) with the "
        "watchdog's overrides of it.",
        (
            Argument("policy", "policy", required=True, by_plane=True),
            Argument("policy_name", "str", by_plane=True),
            Argument("version", "int", bound=EPOCH_BOUND, by_plane=True),
            Argument("overrides", "overrides", by_plane=True),
        ),
        role="operator",
    ),
    NodeOperationSpec(
        "pause",
        "Stop the trainer learning; inference keeps serving.",
        role="operator",
        label="Pause trainer",
        button=True,
        confirm="Pause the trainer of {node}?",
        confirm_detail="Inference keeps serving; the LoRA correction stops learning until you "
        "resume.",
        modes=TRAINING_MODES,
    ),
    NodeOperationSpec(
        "resume",
        "Let the trainer learn again.",
        role="operator",
        label="Resume trainer",
        button=True,
        modes=TRAINING_MODES,
    ),
    NodeOperationSpec(
        "snapshot",
        "Persist the factors and the rows folded into the base.",
        role="operator",
        label="Snapshot",
        button=True,
        modes=TRAINING_MODES,
    ),
    NodeOperationSpec(
        "rebase",
        "Load a registered base checkpoint (optionally keeping the factors).",
        (
            Argument("checkpoint", "checkpoint", required=True, by_plane=True),
            Argument("keep_factors", "bool"),
        ),
        role="operator",
    ),
    NodeOperationSpec(
        "list_snapshots",
        "The node's snapshots: time, base checkpoint, rank and rows per table, AUC then.",
        role="viewer",
        modes=TRAINING_MODES,
    ),
    NodeOperationSpec(
        "restore_snapshot",
        "Serve a snapshot's factors again ('base': the bare base; 'last_good': the newest "
        "snapshot taken with AUC >= min_auc, else the bare base).",
        (
            Argument("name", "str", required=True, pattern=SNAPSHOT_NAME_RE),
            Argument("min_auc", "float", bound=Bound(float, 0.0, 1.0, nullable=True)),
            Argument("reason", "str", max_length=300),
        ),
        role="operator",
        confirm="Restore a snapshot on {node}?",
        confirm_detail="The node drops its current LoRA correction and serves the snapshot's.",
        modes=TRAINING_MODES,
    ),
    NodeOperationSpec(
        "announce_snapshot",
        "The training cluster takes this snapshot for a delta rebase now: the trainer anchors "
        "its served rows, so what it learns until the rows land is carried onto them.",
        (
            Argument("snapshot", "int", required=True, bound=SNAPSHOT_ID),
            Argument("taken_at", "float", required=True, bound=_TIME),
        ),
    ),
    NodeOperationSpec(
        "apply_delta",
        "Rows from the training cluster replace the base rows (the delta-sync baseline); with "
        "the cluster's MLPs (dense) a delta rebase: those rows' corrections are dropped, every "
        "other row keeps its own (with the announced snapshot they were taken at, what the "
        "trainer learnt about them since is carried onto them).",
        (
            Argument("deltas", "object", required=True),
            Argument("created_at", "float", bound=_NULLABLE_TIME),
            Argument("trained_until", "float", bound=_NULLABLE_TIME),
            Argument("dense", "object"),
            Argument("snapshot", "int", bound=SNAPSHOT_ID),
        ),
    ),
    NodeOperationSpec("status", "The node's health, policy, placement and feed counts."),
)

OPERATIONS: dict[str, NodeOperationSpec] = {spec.name: spec for spec in NODE_OPERATIONS}
NODE_TASKS = tuple(spec.task for spec in NODE_OPERATIONS)
PLANE_ACTIONS: dict[str, NodeOperationSpec] = {
    spec.name: spec for spec in NODE_OPERATIONS if spec.role is not None
}
