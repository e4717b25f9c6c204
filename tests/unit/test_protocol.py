import math
from dataclasses import FrozenInstanceError

import pytest

from nodeworker import protocol
from nodeworker.protocol import telemetry as protocol_telemetry
from tests.factories import telemetry_sample

NOW = 1_700_000_000.0


def good_sample(seq=0, **overrides):
    events = [{"kind": "rank_change", "ts": NOW + 0.5, "detail": {"from": 4, "to": 6}}]
    return telemetry_sample(seq, NOW + seq, **{"events": events, **overrides})


def validate(samples, **batch):
    return protocol_telemetry.validate_batch({"node": "n1", "samples": samples, **batch}, now=NOW)


def test_queue_names():
    assert protocol.node_queue("edge-1") == "node.edge-1"
    with pytest.raises(ValueError, match="invalid node name"):
        protocol.node_queue("Bad Name")


def test_policy_defaults_are_valid_and_bounds_reported_per_field():
    clean, errors = protocol.validate_policy({})
    assert errors == {} and clean == protocol.DEFAULT_POLICY
    assert clean.wire() == protocol.POLICY_DEFAULTS  # the wire shape: one key per field
    _, errors = protocol.validate_policy(
        {
            "tau": 1.5,
            "r_min": 8,
            "r_max": 4,
            "memory_budget_pct": 0,
            "mode": "turbo",
            "sla_p99_ms": math.nan,
            "bogus": 1,
        }
    )
    assert errors == {
        "tau": "Must be >= 0.5 and <= 1.0.",
        "r_max": "Must be >= r_min.",
        "memory_budget_pct": "Must be > 0.0 and <= 10.0.",
        "mode": "Must be one of liveupdate, delta_sync, frozen.",
        "sla_p99_ms": "Must be a finite number.",
        "bogus": "Unknown policy field.",
    }


def test_policy_rejects_booleans_and_fractions_for_integers():
    policy, errors = protocol.validate_policy({"r_min": True, "r_max": 2.5})
    assert errors == {"r_min": "Must be a whole number.", "r_max": "Must be a whole number."}
    assert policy is None


def test_a_valid_policy_is_frozen_and_typed():
    policy, _ = protocol.validate_policy({"r_max": 8.0, "tau": 1, "auc_floor": None})
    assert policy is not None
    assert policy.r_max == 8 and type(policy.r_max) is int and type(policy.tau) is float
    with pytest.raises(FrozenInstanceError):
        policy.r_max = 4  # type: ignore[misc]


def test_an_override_takes_the_stricter_value():
    policy, _ = protocol.validate_policy({"max_trainer_duty": 0.5})
    assert policy is not None
    assert policy.with_overrides({"max_trainer_duty": 0.1}).max_trainer_duty == 0.1
    assert policy.with_overrides({"max_trainer_duty": 0.9}).max_trainer_duty == 0.5
    assert policy.with_overrides({}) == policy


def test_overrides_are_bounded_and_limited_to_overridable_fields():
    assert protocol.validate_overrides({"max_trainer_duty": 1}) == (
        {"max_trainer_duty": 1.0},
        {},
    )
    assert protocol.validate_overrides({"max_trainer_duty": 0.0, "r_max": 2}) == (
        None,
        {
            "max_trainer_duty": "Must be > 0.0 and <= 1.0.",
            "r_max": "Not overridable (only max_trainer_duty).",
        },
    )
    assert protocol.validate_overrides([0.5])[1] == {
        "overrides": "Must be an object of field -> value."
    }


def test_valid_batch_passes():
    batch = validate([good_sample(0), good_sample(1)], epoch=7)
    assert [s["seq"] for s in batch.samples] == [0, 1] and batch.epoch == 7
    assert validate([good_sample(0)]).epoch == 0  # a node from before epochs


def test_malformed_batch_reports_every_field():
    bad = good_sample(3, p99_ms=float("inf"), qps=-1, throttle="sleepy", cpu_per_core=[120])
    bad["tables"]["user"]["rank"] = -2
    del bad["memory_overhead_pct"]
    with pytest.raises(protocol_telemetry.TelemetryError) as excinfo:
        validate([good_sample(0), bad])
    assert excinfo.value.errors == {
        "samples[1].p99_ms": "Must be a finite number.",
        "samples[1].qps": "Must be >= 0.0 and <= 1000000000.0.",
        "samples[1].memory_overhead_pct": "This field is required.",
        "samples[1].throttle": "Must be one of running, throttled, paused.",
        "samples[1].tables.user.rank": "Must be >= 0 and <= 4096.",
        "samples[1].cpu_per_core": "Must be a list of at most 4096 percentages between 0 and 100.",
    }


def test_duplicate_seq_and_empty_batches_are_rejected():
    with pytest.raises(protocol_telemetry.TelemetryError, match="unique"):
        validate([good_sample(1), good_sample(1)])
    with pytest.raises(protocol_telemetry.TelemetryError, match="non-empty"):
        validate([])
    with pytest.raises(protocol_telemetry.TelemetryError, match="JSON object"):
        protocol_telemetry.validate_batch([1, 2])
