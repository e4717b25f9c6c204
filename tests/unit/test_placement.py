import os
import threading

import pytest

from nodeworker import placement
from nodeworker.placement import (
    CgroupCpu,
    Resctrl,
    parse_cpulist,
    partition,
    plan_placement,
    read_topology,
)


def cpulist(cpus: list[int]) -> str:
    """The kernel's cpulist format, written out plainly: "0,1,2"."""
    return ",".join(str(c) for c in sorted(cpus))


def fake_sysfs(root, nodes: dict[int, str], smt: int = 1, offline: str = ""):
    """nodes: node id -> cpulist. With smt=2, cpus c and c + n_cpus/2 are siblings (as on x86)."""
    system = root / "sys/devices/system"
    all_cpus = sorted(c for text in nodes.values() for c in parse_cpulist(text))
    online = [c for c in all_cpus if c not in parse_cpulist(offline)]
    (system / "cpu").mkdir(parents=True)
    (system / "cpu/online").write_text(cpulist(online) + "\n")
    half = len(all_cpus) // smt
    for cpu in all_cpus:
        topo = system / f"cpu/cpu{cpu}/topology"
        topo.mkdir(parents=True)
        siblings = sorted({cpu % half + k * half for k in range(smt)})
        topo.joinpath("thread_siblings_list").write_text(cpulist(siblings))
    for node_id, text in nodes.items():
        (system / f"node/node{node_id}").mkdir(parents=True)
        (system / f"node/node{node_id}/cpulist").write_text(text + "\n")
    return root


def test_parse_cpulist():
    assert parse_cpulist("0-3,8,10-11\n") == (0, 1, 2, 3, 8, 10, 11)
    assert parse_cpulist("") == ()
    with pytest.raises(ValueError, match="bad cpulist"):
        parse_cpulist("0-x")


def test_one_node_two_cpus_splits_one_and_one(tmp_path):
    topo = read_topology(fake_sysfs(tmp_path, {0: "0-1"}))
    assert [n.cpus for n in topo.nodes] == [(0, 1)]
    plan = plan_placement(topo)
    assert plan.inference_cpus == (0,) and plan.trainer_cpus == (1,) and not plan.shared
    assert plan.inference_threads == len(plan.trainer_cpus) == 1


def test_single_cpu_shares_with_a_note(tmp_path):
    plan = plan_placement(read_topology(fake_sysfs(tmp_path, {0: "0"})))
    assert plan.shared and plan.inference_cpus == plan.trainer_cpus == (0,)
    assert "share cpu 0" in plan.notes[0]


def test_two_nodes_places_on_the_table_node_and_skips_offline(tmp_path):
    topo = read_topology(fake_sysfs(tmp_path, {0: "0-3", 1: "4-7"}, offline="5"))
    assert topo.node(1).cpus == (4, 6, 7)
    plan = plan_placement(topo, table_node=1, trainer_cores=1)
    assert plan.node == 1 and plan.trainer_cpus == (7,) and plan.inference_cpus == (4, 6)
    assert set(plan.trainer_cpus).isdisjoint(plan.inference_cpus)
    # Default node: the one with the most online cpus.
    assert plan_placement(topo).node == 0
    with pytest.raises(ValueError, match="no NUMA node 3"):
        plan_placement(topo, table_node=3)


def test_four_nodes_with_hyperthreads_keeps_siblings_together(tmp_path):
    # 16 cpus, SMT2: siblings (c, c+8); nodes of 4 cpus = 2 physical cores each.
    nodes = {0: "0-1,8-9", 1: "2-3,10-11", 2: "4-5,12-13", 3: "6-7,14-15"}
    topo = read_topology(fake_sysfs(tmp_path, nodes, smt=2))
    assert len(topo.nodes) == 4 and topo.node(2).cores == ((4, 12), (5, 13))
    plan = plan_placement(topo, table_node=2, trainer_share=0.5)
    assert plan.trainer_cpus == (5, 13) and plan.inference_cpus == (4, 12)
    assert not plan.notes
    # Three trainer cpus cannot be whole cores: one core is split, and the plan says so.
    odd = plan_placement(topo, table_node=2, trainer_cores=3)
    assert len(odd.trainer_cpus) == 3 and len(odd.inference_cpus) == 1
    assert "hyperthread" in odd.notes[0]
    # Asking for every cpu leaves inference one.
    greedy = plan_placement(topo, table_node=2, trainer_cores=99)
    assert len(greedy.inference_cpus) == 1 and "inference keeps 1" in greedy.notes[0]


def test_no_numa_dirs_is_one_node(tmp_path):
    (tmp_path / "sys/devices/system/cpu").mkdir(parents=True)
    (tmp_path / "sys/devices/system/cpu/online").write_text("0-2\n")
    topo = read_topology(tmp_path)
    assert [(n.id, n.cpus) for n in topo.nodes] == [(0, (0, 1, 2))]


def test_pin_process_pins_every_thread_already_running():
    before = os.sched_getaffinity(0)
    started, release = threading.Event(), threading.Event()
    worker = threading.Thread(target=lambda: (started.set(), release.wait(10)))
    worker.start()
    started.wait(10)
    try:
        cpu = max(before)  # not the first cpu, so a thread left alone would differ on 2+ cpus
        assert placement.pin_process((cpu,)) == (cpu,)
        assert os.sched_getaffinity(worker.native_id) == {cpu}
    finally:
        release.set()
        worker.join()
        placement.pin_process(tuple(before))


def fake_resctrl(root, ways=12, domains=(0, 1)):
    base = root / "sys/fs/resctrl"
    (base / "info/L3").mkdir(parents=True)
    (base / "info/MB").mkdir(parents=True)
    (base / "info/L3/cbm_mask").write_text(f"{(1 << ways) - 1:x}\n")
    (base / "info/L3/min_cbm_bits").write_text("1\n")
    (base / "info/MB/bandwidth_gran").write_text("10\n")
    (base / "info/MB/min_bandwidth").write_text("10\n")
    full = f"{(1 << ways) - 1:x}"
    (base / "schemata").write_text(
        "L3:" + ";".join(f"{d}={full}" for d in domains) + "\n"
        "MB:" + ";".join(f"{d}=100" for d in domains) + "\n"
    )
    return base


def test_resctrl_creates_groups_writes_schemata_and_assigns_tasks(tmp_path):
    base = fake_resctrl(tmp_path)
    results = partition(
        tmp_path,
        [101, 102],
        [201],
        cache_pct=25,
        bandwidth_pct=34,
        trainer_share=0.5,
        trainer_cpus=1,
    )
    assert [(r.mechanism, r.status) for r in results] == [("resctrl", "applied")]
    trainer = base / "liveupdate-trainer"
    assert (trainer / "schemata").read_text() == "L3:0=7;1=7\nMB:0=30;1=30\n"
    assert (
        base / "liveupdate-inference/schemata"
    ).read_text() == "L3:0=ff8;1=ff8\nMB:0=100;1=100\n"
    assert (trainer / "tasks").read_text().split() == ["201"]
    assert (base / "liveupdate-inference/tasks").read_text().split() == ["101", "102"]


def test_resctrl_without_a_request_or_mount_is_reported(tmp_path):
    assert Resctrl(tmp_path).apply([1], [2], 25, 0).status.startswith("not available")
    fake_resctrl(tmp_path)
    result = Resctrl(tmp_path).apply([1], [2], 0, 0)
    assert result.status.startswith("not available: no partition requested")


def test_cgroup_fallback_when_resctrl_is_missing(tmp_path):
    cg = tmp_path / "sys/fs/cgroup/unified"
    cg.mkdir(parents=True)
    (cg / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    results = partition(
        tmp_path, [1], [4242], cache_pct=50, bandwidth_pct=50, trainer_share=0.25, trainer_cpus=2
    )
    assert results[0].mechanism == "resctrl" and results[0].status.startswith("not available")
    assert (results[1].mechanism, results[1].status) == ("cgroup", "applied")
    assert (cg / "liveupdate-trainer/cpu.max").read_text() == "50000 100000\n"
    assert (cg / "liveupdate-trainer/cgroup.procs").read_text().split() == ["4242"]
    assert (cg / "cgroup.subtree_control").read_text() == "+cpu\n"


def test_nothing_available_is_reported_not_raised(tmp_path):
    (tmp_path / "sys/fs/cgroup").mkdir(parents=True)
    (tmp_path / "sys/fs/cgroup/cgroup.controllers").write_text("memory pids\n")
    assert CgroupCpu(tmp_path).apply([1], 0.5, 1).status.startswith("not available")
