"""The wire between the control plane and the nodes. Imports nothing heavy (stdlib only), so the
control plane may import it without torch.

- Celery: node tasks are sent by name to the queue ``node.<name>``; the operations, their task
  names and arguments are declared in nodeworker.protocol.operations.
- Policies: the fields, their bounds and one validator (to a frozen ``Policy``) used by the API,
  the admin and the node; the fields an automatic override may tighten (``STRICTER``).
- Bounds: ``Bound`` and ``check_number``, which the policy table here and the telemetry tables
  (nodeworker.protocol.telemetry) are written in.

Telemetry (the batch a node posts, its bounds and validators) lives in
nodeworker.protocol.telemetry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

NODE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

TELEMETRY_PATH = "/api/telemetry/ingest/"
# Header a node authenticates its telemetry with: ``Authorization: Node <token>``.
NODE_AUTH_SCHEME = "Node"


def node_queue(node_name: str) -> str:
    if not NODE_NAME_RE.match(node_name):
        raise ValueError(f"invalid node name {node_name!r}: lowercase letters, digits and '-'")
    return f"node.{node_name}"


# --- policies ---------------------------------------------------------------------------------

MODES = ("liveupdate", "delta_sync", "frozen")
PRUNE_ACTIONS = ("fold", "discard")


@dataclass(frozen=True)
class Bound:
    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low instead of >= low
    nullable: bool = False

    def describe(self) -> str:
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low}"
        high = "" if self.high is None else f"<= {self.high}"
        return " and ".join(p for p in (low, high) if p)


POLICY_BOUNDS: dict[str, Bound] = {
    "r_min": Bound(int, 1, 64),
    "r_max": Bound(int, 1, 64),
    "memory_budget_pct": Bound(float, 0.0, 10.0, low_open=True),
    "tau": Bound(float, 0.5, 1.0),
    "prune_age_s": Bound(float, 1.0, 7 * 86400.0),
    "trainer_cores": Bound(int, 0, 1024),
    "trainer_share": Bound(float, 0.0, 1.0, low_open=True),
    "cache_partition_pct": Bound(int, 0, 100),
    "bandwidth_partition_pct": Bound(int, 0, 100),
    "max_trainer_duty": Bound(float, 0.0, 1.0, low_open=True),
    "sla_p99_ms": Bound(float, 0.0, 60000.0, low_open=True),
    "auc_floor": Bound(float, 0.5, 1.0, nullable=True),
    "rollback_after_intervals": Bound(int, 0, 360),
    "rebase_period_s": Bound(float, 0.0, 7 * 86400.0),
    "lr_top": Bound(float, 0.0, 1.0),
    "top_layers": Bound(int, 1, 16),
}
POLICY_DEFAULTS: dict[str, Any] = {
    "mode": "liveupdate",
    "r_min": 2,
    "r_max": 16,
    "memory_budget_pct": 2.0,
    "tau": 0.9,
    "prune_age_s": 600.0,
    "prune_action": "fold",
    "trainer_cores": 0,  # 0: let the node pick its idle cores
    "trainer_share": 0.5,
    "cache_partition_pct": 0,  # 0: no CAT partition requested
    "bandwidth_partition_pct": 0,
    "max_trainer_duty": 1.0,
    "sla_p99_ms": 50.0,
    "auc_floor": None,
    "rollback_after_intervals": 0,  # 0: no automatic rollback (controlplane watchdog)
    "rebase_period_s": 0.0,  # 0: no delta rebase (the training cluster's delta sync instead)
    # the node's Adagrad on its top MLP's last top_layers linear layers; 0: off, the measured
    # default (docs/RESULTS.md "Fine-tuning the top MLP on the node")
    "lr_top": 0.0,
    "top_layers": 1,  # a node whose top MLP has fewer layers tunes all of them
}


def check_number(value: Any, bound: Bound) -> str | None:
    """Why ``value`` is not a number within ``bound`` (None: it is); a huge integer is compared
    as it is, never converted to a float (that would overflow)."""
    if value is None:
        return None if bound.nullable else "This field may not be null."
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"Must be a {'whole ' if bound.kind is int else ''}number."
    if isinstance(value, float):
        if not math.isfinite(value):
            return "Must be a finite number."
        if bound.kind is int and not value.is_integer():
            return "Must be a whole number."
    too_low = bound.low is not None and (
        value <= bound.low if bound.low_open else value < bound.low
    )
    too_high = bound.high is not None and value > bound.high
    if too_low or too_high:
        return f"Must be {bound.describe()}."
    return None


@dataclass(frozen=True)
class Policy:
    """A validated node policy (validate_policy): what people set. On the wire it is
    ``asdict(policy)``; its fields are POLICY_DEFAULTS' keys, their bounds POLICY_BOUNDS."""

    mode: str  # one of MODES
    r_min: int
    r_max: int
    memory_budget_pct: float
    tau: float
    prune_age_s: float
    prune_action: str  # one of PRUNE_ACTIONS
    trainer_cores: int
    trainer_share: float
    cache_partition_pct: int
    bandwidth_partition_pct: int
    max_trainer_duty: float
    sla_p99_ms: float
    auc_floor: float | None
    rollback_after_intervals: int  # the plane's automatic rollback; the node ignores it
    rebase_period_s: float  # the training cluster's delta rebase period (delta_cluster); 0: off
    lr_top: float  # the trainer's learning rate on the top MLP's last layers (0: frozen)
    top_layers: int  # how many of the top MLP's last linear layers it tunes

    def wire(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, overrides: Mapping[str, float]) -> Policy:
        """The policy in force on a node: each overridden field at the stricter of the policy's
        value and the override's (validate_overrides)."""
        stricter: dict[str, Any] = {
            name: STRICTER[name](getattr(self, name), v) for name, v in overrides.items()
        }
        return replace(self, **stricter)


# The fields an automatic override (the control plane's watchdog) may set, and which of two
# values is the stricter one.
STRICTER: dict[str, Callable[[float, float], float]] = {"max_trainer_duty": min}


def validate_policy(policy: Mapping[str, Any]) -> tuple[Policy | None, dict[str, str]]:
    """(the policy, its defaults filled in; field errors). The policy is None when there are
    errors."""
    errors: dict[str, str] = {}
    unknown = set(policy) - set(POLICY_DEFAULTS)
    for name in sorted(unknown):
        errors[name] = "Unknown policy field."
    clean = {**POLICY_DEFAULTS, **{k: v for k, v in policy.items() if k in POLICY_DEFAULTS}}
    if clean["mode"] not in MODES:
        errors["mode"] = f"Must be one of {', '.join(MODES)}."
    if clean["prune_action"] not in PRUNE_ACTIONS:
        errors["prune_action"] = f"Must be one of {', '.join(PRUNE_ACTIONS)}."
    for name, bound in POLICY_BOUNDS.items():
        message = check_number(clean[name], bound)
        if message:
            errors[name] = message
        elif clean[name] is not None:
            clean[name] = bound.kind(clean[name])
    if "r_min" not in errors and "r_max" not in errors and clean["r_min"] > clean["r_max"]:
        errors["r_max"] = "Must be >= r_min."
    return (None if errors else Policy(**clean)), errors


def validate_overrides(overrides: Any) -> tuple[dict[str, float] | None, dict[str, str]]:
    """(the overrides as floats; errors keyed by field). Only STRICTER's fields, each within
    the policy field's bounds."""
    if not isinstance(overrides, Mapping):
        return None, {"overrides": "Must be an object of field -> value."}
    errors: dict[str, str] = {}
    for name, value in overrides.items():
        if name not in STRICTER:
            errors[str(name)] = f"Not overridable (only {', '.join(STRICTER)})."
        elif message := check_number(value, POLICY_BOUNDS[name]):
            errors[name] = message
    if errors:
        return None, errors
    return {name: float(value) for name, value in overrides.items()}, {}


# The defaults as a Policy; building it at import checks Policy's fields against the table.
DEFAULT_POLICY = Policy(**POLICY_DEFAULTS)
