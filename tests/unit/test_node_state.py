"""What the plane applied, as the node keeps it in applied.json (nodeworker.node_state): the
policy people set and the watchdog's overrides stay apart on disk and combine (the stricter
value) in force; a saved state that no longer validates is not restored."""

from __future__ import annotations

import json

from nodeworker import protocol
from nodeworker.node_state import AppliedState


def policy(**values) -> protocol.Policy:
    clean, errors = protocol.validate_policy(values)
    assert clean is not None, errors
    return clean


def test_policy_and_overrides_round_trip_apart(tmp_path):
    path = tmp_path / "applied.json"
    saved = AppliedState(policy(max_trainer_duty=0.8, r_max=4), 7, {"max_trainer_duty": 0.2})
    saved.save(path)
    on_disk = json.loads(path.read_text())
    assert on_disk["policy"]["max_trainer_duty"] == 0.8  # the wire shape: asdict(Policy)
    assert on_disk["overrides"] == {"max_trainer_duty": 0.2}
    loaded = AppliedState.load(path)
    assert loaded == saved
    in_force = loaded.policy_in_force()
    assert in_force is not None and in_force.max_trainer_duty == 0.2 and in_force.r_max == 4
    assert AppliedState().policy_in_force() is None


def test_a_state_from_before_overrides_loads_without_any(tmp_path):
    path = tmp_path / "applied.json"
    path.write_text(json.dumps({"policy": {"r_max": 3}, "policy_version": 2}))
    loaded = AppliedState.load(path)
    assert loaded.policy == policy(r_max=3) and loaded.overrides == {}


def test_an_invalid_override_or_policy_is_not_restored(tmp_path):
    path = tmp_path / "applied.json"
    for bad in (
        {"policy": {"r_max": 3}, "policy_version": 2, "overrides": {"max_trainer_duty": 0}},
        {"policy": {"r_max": 3}, "policy_version": 2, "overrides": {"r_max": 1}},
        {"policy": [1], "policy_version": 2},
        {"policy": {"r_max": 3}, "policy_version": -1},
    ):
        path.write_text(json.dumps(bad))
        loaded = AppliedState.load(path)
        assert (loaded.policy, loaded.policy_version, loaded.overrides) == (None, None, {}), bad
