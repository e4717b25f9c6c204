import random

import pytest

from nodeworker.qos import DutyCycle, LatencyWindow, QosConfig, QosController

CFG = QosConfig(sla_p99_ms=20.0, window_s=1.0, min_samples=10, increase=0.1, decrease=0.5)


def play(ctl: QosController, trace: list[float], t0: float, qps: int = 100) -> list:
    """Feed one second of constant latency per trace entry; step the controller each second."""
    decisions = []
    for i, latency in enumerate(trace):
        for k in range(qps):
            ctl.observe(latency, t0 + i + k / qps)
        decisions.append(ctl.step(t0 + i + 1))
    return decisions


def test_latency_window_quantiles_and_sliding():
    w = LatencyWindow(window_s=1.0)
    for i in range(100):
        w.add(float(i + 1), now=10.0 + i / 1000)
    assert w.quantiles(10.1, (0.5, 0.99, 1.0)) == (50.0, 99.0, 100.0)
    assert w.count(10.5) == 100
    assert w.count(11.05) == 50  # the first half slid out
    assert w.quantiles(20.0, (0.99,)) == (None,)


def test_low_latency_increases_additively_to_max():
    ctl = QosController(CFG, start_duty=0.5)
    decisions = play(ctl, [5.0] * 8, t0=100.0)
    duties = [round(d.duty, 3) for d in decisions]
    assert duties == [0.6, 0.7, 0.8, 0.9, 1.0, 1.0, 1.0, 1.0]
    assert [d.action for d in decisions][-1] == "hold"
    assert decisions[-1].state == "running" and decisions[0].state == "throttled"
    events = ctl.drain_events()
    assert [e.detail["action"] for e in events] == ["increase"] * 5
    assert all(e.kind == "qos" for e in events) and ctl.drain_events() == []


def test_spike_over_sla_pauses_then_recovers():
    ctl = QosController(CFG)
    trace = [5.0, 5.0, 30.0, 30.0, 30.0, 5.0, 5.0, 5.0, 5.0]
    decisions = play(ctl, trace, t0=0.0)
    states = [d.state for d in decisions]
    assert states[:2] == ["running", "running"]
    assert states[2:5] == ["paused"] * 3
    assert all(d.effective_duty == 0.0 for d in decisions[2:5])
    assert [round(d.duty, 3) for d in decisions[2:5]] == [0.5, 0.25, 0.125]
    # Back under the SLA: additive increase from where the decrease left it.
    assert states[5] == "throttled" and decisions[5].effective_duty == pytest.approx(0.225)
    assert decisions[-1].duty > decisions[5].duty
    actions = [e.detail["action"] for e in ctl.drain_events()]
    assert actions.count("pause") == 3 and "increase" in actions


def test_near_sla_and_deep_queue_decrease_without_pausing():
    ctl = QosController(CFG)
    near = play(ctl, [19.0, 19.0], t0=0.0)
    assert [d.action for d in near] == ["decrease", "decrease"]
    assert [d.state for d in near] == ["throttled", "throttled"]
    assert near[-1].duty == pytest.approx(0.25) and near[-1].effective_duty == near[-1].duty
    ctl2 = QosController(CFG)
    ctl2.observe_queue_depth(CFG.max_queue_depth + 1)
    d = play(ctl2, [1.0], t0=0.0)[0]
    assert d.action == "decrease" and "queue depth" in d.reason
    # Between headroom and near: hold.
    ctl3 = QosController(CFG, start_duty=0.4)
    assert play(ctl3, [17.5], t0=0.0)[0].action == "hold"


def test_too_little_traffic_counts_as_idle_and_operator_pause_wins():
    ctl = QosController(CFG, start_duty=0.3)
    for k in range(5):  # below min_samples, even if slow
        ctl.observe(100.0, k * 0.1)
    assert ctl.step(1.0).action == "increase"
    ctl.set_operator_pause(True)
    d = ctl.step(2.0)
    assert (d.action, d.state, d.effective_duty) == ("operator_pause", "paused", 0.0)
    ctl.set_operator_pause(False)
    assert ctl.step(3.0).state == "throttled"


def test_policy_change_clamps_duty():
    ctl = QosController(CFG)
    ctl.set_policy(sla_p99_ms=10.0, max_duty=0.3)
    assert ctl.duty == 0.3
    assert play(ctl, [9.5], t0=0.0)[0].action == "decrease"  # 9.5 >= 0.9 x 10


def test_closed_loop_keeps_p99_inside_sla_while_the_trainer_still_runs():
    """Latency grows with the trainer's duty (cache and bandwidth interference):
    5 ms + 30 ms x duty x noise. The loop must settle below the SLA with duty > 0."""
    rng = random.Random(7)
    ctl = QosController(CFG)
    p99s, duties = [], []
    for second in range(60):
        duty = ctl.last.effective_duty if ctl.last else ctl.duty
        for k in range(200):
            ctl.observe(5.0 + 30.0 * duty * rng.uniform(0.3, 1.0), second + k / 200)
        d = ctl.step(second + 1)
        p99s.append(d.p99_ms)
        duties.append(d.effective_duty)
    settled = p99s[20:]
    over = sum(p > CFG.sla_p99_ms for p in settled)
    assert over <= 2, settled
    assert sum(duties[20:]) / 40 > 0.2


def test_latency_noise_the_trainer_does_not_cause_leaves_it_running_most_of_the_time():
    """Latencies drawn from one distribution whatever the duty (a trainer that disturbs nothing),
    SLA 1.15 x their P99 (the node bench's choice), the runtime's window and period: the 2 s
    window's P99 still crosses 0.9 x SLA now and then, but the duty must climb back, not
    only fall (0.72 on average here; 0.10 when the increase threshold was 0.7 x SLA)."""

    def latency(rng: random.Random) -> float:  # the node's shape: ~0.6 ms, a 3% tail to 15 ms
        return rng.lognormvariate(-0.5, 0.4) if rng.random() < 0.97 else rng.uniform(1.0, 15.0)

    rng = random.Random(1)
    reference = sorted(latency(rng) for _ in range(100_000))
    ctl = QosController(QosConfig(sla_p99_ms=1.15 * reference[98_999], window_s=2.0))
    duties, qps, period = [], 1500, 0.25
    for step in range(160):  # 40 s
        for k in range(int(qps * period)):
            ctl.observe(latency(rng), step * period + k / qps)
        duties.append(ctl.step((step + 1) * period).effective_duty)
    assert sum(duties[40:]) / 120 > 0.4, duties


def test_duty_cycle_limits_busy_fraction():
    clock = [0.0]
    gate = DutyCycle(burst_s=0.05, clock=lambda: clock[0])
    busy = 0.0
    while clock[0] < 20.0:
        wait = gate.wait_time(0.3)
        if wait > 0:
            clock[0] += wait
            continue
        clock[0] += 0.01  # one 10 ms training step
        busy += 0.01
        gate.spend(0.01)
    assert busy / clock[0] == pytest.approx(0.3, abs=0.02)
    fresh = DutyCycle(clock=lambda: clock[0])
    assert fresh.wait_time(0.5) == 0.0 and fresh.wait_time(0.0) == float("inf")  # paused


def test_one_stall_cuts_the_duty_once_not_every_period_it_stays_in_the_window():
    """A 2 s window stepped every 0.25 s: the requests caught in one 100 ms stall must not be
    held against every later period. One cut (a pause), judged afresh on the latencies after it,
    then the duty grows back."""
    cfg = QosConfig(sla_p99_ms=20.0, window_s=2.0, min_samples=20, increase=0.05, decrease=0.5)
    ctl = QosController(cfg)
    decisions = []
    for period in range(24):  # 6 s, 400 req/s
        for k in range(100):
            t = period * 0.25 + k / 400
            ctl.observe(150.0 if 2.0 <= t < 2.1 else 5.0, t)
        decisions.append(ctl.step((period + 1) * 0.25))
    actions = [d.action for d in decisions]
    assert actions.count("pause") == 1 and "decrease" not in actions
    cut = actions.index("pause")
    assert decisions[cut].duty == pytest.approx(0.5)
    assert all(d.effective_duty > 0 for d in decisions[cut + 1 :])
    assert decisions[-1].duty == 1.0  # grown back


def test_a_pause_holds_until_latencies_after_it_are_in():
    ctl = QosController(QosConfig(sla_p99_ms=20.0, window_s=2.0, min_samples=20))
    for k in range(100):
        ctl.observe(50.0, k / 100)
    assert ctl.step(1.0).action == "pause"
    for k in range(5):  # too few since the pause to judge the new duty
        ctl.observe(5.0, 1.0 + k / 100)
    held = ctl.step(1.1)
    assert (held.action, held.state, held.effective_duty) == ("hold", "paused", 0.0)
    for k in range(30):
        ctl.observe(5.0, 1.1 + k / 100)
    resumed = ctl.step(1.5)
    assert resumed.state == "throttled" and resumed.effective_duty == pytest.approx(0.55)


def test_a_window_nobody_reads_holds_only_its_window():
    """Trimmed on add too: unread (no telemetry reporter), it kept every request up to max_count."""
    w = LatencyWindow(window_s=1.0)
    for i in range(10_000):  # 100 s at 100 requests a second
        w.add(5.0, now=i * 0.01)
    assert len(w._items) <= 101
