"""Control-plane rules that need no database: the results.json schema, the Prometheus text
format, the telemetry columns kept in step with the wire protocol, roles of node tokens."""

from __future__ import annotations

import math

from controlplane.experiments import validate_results
from controlplane.models import Policy, TelemetrySample
from controlplane.roles import role_level
from nodeworker import protocol
from nodeworker.protocol import telemetry as protocol_telemetry


def test_results_schema_reports_paths():
    assert validate_results([]) == {"": "Must be a JSON object."}
    assert validate_results({"dataset": {}, "windows": [], "claims": [], "strategies": {}}) == {
        "strategies": "Must be a non-empty object of strategy name -> results."
    }
    errors = validate_results(
        {
            "dataset": "criteo",
            "windows": [],
            "claims": [],
            "strategies": {"stale": {"mean_auc": math.inf, "auc_per_window": [0.7, "x"]}},
        }
    )
    assert errors["dataset"] == "Must be an object."
    assert errors["strategies.stale.mean_auc"] == "Must be a finite number or null."
    assert errors["strategies.stale.auc_per_window"] == (
        "Must be a list of finite numbers or nulls."
    )
    assert errors["strategies.stale.cpu_seconds"] == "This field is required."


def test_every_wire_metric_and_policy_field_has_a_column():
    columns = {f.name for f in TelemetrySample._meta.concrete_fields}
    assert set(protocol_telemetry.SAMPLE_METRICS) <= columns
    for name, (required, bound) in protocol_telemetry.SAMPLE_METRICS.items():
        if required and not bound.nullable:
            assert not TelemetrySample._meta.get_field(name).null, name
    assert set(Policy.WIRE_FIELDS) == set(protocol.POLICY_DEFAULTS)
    assert {f.name for f in Policy._meta.concrete_fields} >= set(protocol.POLICY_DEFAULTS)


def test_a_node_token_has_no_role():
    from controlplane.authentication import NodePrincipal
    from controlplane.models import Node

    assert role_level(NodePrincipal(Node(name="n1"))) == 0
    assert role_level(None) == 0
