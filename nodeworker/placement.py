"""Where the inference loop and the trainer run: CPU/NUMA topology from sysfs, a core plan on the
NUMA node that holds the tables, and how the plan is enforced (affinity, torch threads, resctrl
cache/bandwidth partitions, cgroup v2 cpu.max as the software fallback).

Every path is read under ``root`` (``/`` on a real host) so tests point it at a fake tree.
The tables are allocated after the runtime pins itself to the chosen node, so Linux's first-touch
policy places their pages on that node: "the node that holds the tables" is the node we pick.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

NOT_AVAILABLE = "not available"


def parse_cpulist(text: str) -> tuple[int, ...]:
    """'0-3,8,10-11' -> (0, 1, 2, 3, 8, 10, 11). Empty text is the empty set."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if not re.fullmatch(r"\d+(-\d+)?", part):
            raise ValueError(f"bad cpulist element {part!r} in {text!r}")
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return tuple(sorted(cpus))


@dataclass(frozen=True)
class NumaNode:
    id: int
    cpus: tuple[int, ...]  # online cpus only
    cores: tuple[tuple[int, ...], ...]  # physical cores: groups of hyperthread siblings


@dataclass(frozen=True)
class Topology:
    nodes: tuple[NumaNode, ...]
    online: tuple[int, ...]

    def node(self, node_id: int) -> NumaNode:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise ValueError(f"no NUMA node {node_id}; nodes: {[n.id for n in self.nodes]}")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def read_topology(root: str | Path = "/") -> Topology:
    """The online CPUs grouped by NUMA node and physical core. A kernel without NUMA nodes in
    sysfs is one node 0 holding every online cpu."""
    sysdir = Path(root) / "sys/devices/system"
    online_text = _read(sysdir / "cpu/online")
    online = (
        parse_cpulist(online_text) if online_text is not None else tuple(range(os.cpu_count() or 1))
    )
    node_cpus: dict[int, tuple[int, ...]] = {}
    for node_dir in sorted((sysdir / "node").glob("node[0-9]*")):
        text = _read(node_dir / "cpulist")
        if text is None:
            continue
        cpus = tuple(c for c in parse_cpulist(text) if c in online)
        if cpus:  # memory-only nodes hold no cpus to place anything on
            node_cpus[int(node_dir.name[4:])] = cpus
    if not node_cpus:
        node_cpus = {0: online}
    nodes = []
    for node_id, cpus in sorted(node_cpus.items()):
        cores: dict[tuple[int, ...], None] = {}
        for cpu in cpus:
            siblings = _read(sysdir / f"cpu/cpu{cpu}/topology/thread_siblings_list")
            group = parse_cpulist(siblings) if siblings else (cpu,)
            cores[tuple(c for c in group if c in cpus) or (cpu,)] = None
        nodes.append(NumaNode(node_id, cpus, tuple(cores)))
    return Topology(tuple(nodes), online)


@dataclass(frozen=True)
class PlacementPlan:
    node: int  # the NUMA node holding the tables
    inference_cpus: tuple[int, ...]
    trainer_cpus: tuple[int, ...]
    shared: bool  # True when the node has a single cpu: both run on it (QoS is the only guard)
    notes: tuple[str, ...] = ()

    @property
    def inference_threads(self) -> int:
        return len(self.inference_cpus)

    def as_dict(self) -> dict:
        return {
            "node": self.node,
            "inference_cpus": list(self.inference_cpus),
            "trainer_cpus": list(self.trainer_cpus),
            "shared": self.shared,
            "notes": list(self.notes),
        }


def plan_placement(
    topo: Topology,
    *,
    table_node: int | None = None,
    trainer_cores: int = 0,
    trainer_share: float = 0.5,
) -> PlacementPlan:
    """Disjoint inference and trainer cpus on ``table_node`` (default: the node with the most
    cpus). ``trainer_cores`` > 0 asks for that many cpus, 0 for ``trainer_share`` of the node.
    Whole physical cores go to the trainer first (from the end) so the two never share
    hyperthread siblings when the node has at least two physical cores; inference keeps >= 1."""
    if table_node is None:
        node = max(topo.nodes, key=lambda n: (len(n.cpus), -n.id))
    else:
        node = topo.node(table_node)
    notes: list[str] = []
    if len(node.cpus) == 1:
        notes.append(
            f"NUMA node {node.id} has one cpu: inference and trainer share cpu {node.cpus[0]}, "
            "the QoS throttle alone protects the latency"
        )
        return PlacementPlan(node.id, node.cpus, node.cpus, True, tuple(notes))
    wanted = trainer_cores or max(1, round(len(node.cpus) * trainer_share))
    if wanted >= len(node.cpus):
        notes.append(
            f"asked for {wanted} trainer cpus, node {node.id} has {len(node.cpus)}: "
            f"inference keeps 1"
        )
        wanted = len(node.cpus) - 1
    trainer: list[int] = []
    cores = list(node.cores)
    # Whole cores while they fit and inference keeps at least one core.
    while cores[1:] and len(trainer) + len(cores[-1]) <= wanted:
        trainer.extend(cores.pop())
    if len(trainer) < wanted:
        # Split hyperthreads only when whole cores cannot give the count.
        rest = [c for core in cores for c in core]
        take = wanted - len(trainer)
        trainer.extend(rest[len(rest) - take :])
        notes.append("trainer and inference share a physical core (hyperthread siblings)")
    inference = tuple(c for c in node.cpus if c not in trainer)
    return PlacementPlan(node.id, inference, tuple(sorted(trainer)), False, tuple(notes))


def pin_process(cpus: tuple[int, ...], pid: int = 0) -> tuple[int, ...]:
    """Pin every thread of ``pid`` (0: this process) to ``cpus``; returns the affinity the
    kernel reports. Linux applies sched_setaffinity to one thread, so a process that already
    runs threads (a policy change re-pinning a serving node) must set each of them."""
    target = set(cpus)
    tasks = Path(f"/proc/{pid or 'self'}/task")
    tids = [int(t) for t in os.listdir(tasks)] if tasks.is_dir() else [pid]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, target)
        except ProcessLookupError:  # the thread ended meanwhile
            pass
    os.sched_setaffinity(pid, target)  # new threads inherit it from whoever starts them
    return tuple(sorted(os.sched_getaffinity(pid)))


def configure_torch_threads(threads: int) -> int:
    """Size this process's torch intra-op pool to its cpus (interop to 1: one request stream)."""
    import torch

    torch.set_num_threads(max(1, threads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel region; the default is fine
        pass
    return torch.get_num_threads()


# --- resctrl (Intel RDT / AMD PQoS): cache ways (CAT) and memory bandwidth (MBA) ---------------


@dataclass(frozen=True)
class PartitionResult:
    mechanism: str  # "resctrl" or "cgroup"
    status: str  # "applied" or "not available: <why>"
    detail: dict = field(default_factory=dict)

    @property
    def applied(self) -> bool:
        return self.status == "applied"


class Resctrl:
    """Two resctrl groups, ``liveupdate-inference`` and ``liveupdate-trainer``: the trainer gets
    ``cache_pct`` of the L3 ways (contiguous bits, as CAT requires) and ``bandwidth_pct`` of the
    memory bandwidth; inference keeps the other ways and full bandwidth."""

    GROUPS = ("liveupdate-inference", "liveupdate-trainer")

    def __init__(self, root: str | Path = "/"):
        self.path = Path(root) / "sys/fs/resctrl"

    def unavailable_reason(self) -> str | None:
        if not (self.path / "schemata").exists():
            return f"{self.path} is not mounted (no RDT support or resctrl not mounted)"
        return None

    def _domains(self, resource: str) -> list[str]:
        for line in (self.path / "schemata").read_text().splitlines():
            name, _, rest = line.strip().partition(":")
            if name.strip() == resource:
                return [d.split("=")[0].strip() for d in rest.split(";") if "=" in d]
        return []

    def schemata(self, cache_pct: int, bandwidth_pct: int) -> dict[str, str]:
        """group name -> schemata text."""
        lines: dict[str, list[str]] = {g: [] for g in self.GROUPS}
        inference, trainer = self.GROUPS
        l3_domains = self._domains("L3")
        if cache_pct and l3_domains:
            full = int((self.path / "info/L3/cbm_mask").read_text().strip(), 16)
            ways = full.bit_length()
            min_bits = int(_read(self.path / "info/L3/min_cbm_bits") or "1")
            t_ways = min(ways - min_bits, max(min_bits, round(ways * cache_pct / 100)))
            t_mask = (1 << t_ways) - 1  # low ways to the trainer
            i_mask = full & ~t_mask
            lines[trainer].append("L3:" + ";".join(f"{d}={t_mask:x}" for d in l3_domains))
            lines[inference].append("L3:" + ";".join(f"{d}={i_mask:x}" for d in l3_domains))
        mb_domains = self._domains("MB")
        if bandwidth_pct and mb_domains:
            gran = int(_read(self.path / "info/MB/bandwidth_gran") or "10")
            low = int(_read(self.path / "info/MB/min_bandwidth") or "10")
            pct = max(low, min(100, round(bandwidth_pct / gran) * gran))
            lines[trainer].append("MB:" + ";".join(f"{d}={pct}" for d in mb_domains))
            lines[inference].append("MB:" + ";".join(f"{d}=100" for d in mb_domains))
        return {g: "\n".join(ls) + "\n" for g, ls in lines.items() if ls}

    def apply(
        self, inference_pids: list[int], trainer_pids: list[int], cache_pct: int, bandwidth_pct: int
    ) -> PartitionResult:
        reason = self.unavailable_reason()
        if reason:
            return PartitionResult("resctrl", f"{NOT_AVAILABLE}: {reason}")
        wanted = self.schemata(cache_pct, bandwidth_pct)
        if not wanted:
            return PartitionResult(
                "resctrl",
                f"{NOT_AVAILABLE}: no partition requested "
                "(cache and bandwidth shares are 0 or unsupported)",
            )
        pids = dict(zip(self.GROUPS, (inference_pids, trainer_pids), strict=True))
        for group, text in wanted.items():
            gdir = self.path / group
            gdir.mkdir(exist_ok=True)  # the kernel populates schemata/tasks of a new group
            (gdir / "schemata").write_text(text)
            for pid in pids[group]:
                with (gdir / "tasks").open("a") as f:  # the kernel takes one pid per write
                    f.write(f"{pid}\n")
        return PartitionResult("resctrl", "applied", {"schemata": wanted})


# --- cgroup v2 cpu.max: the software fallback ----------------------------------------------------


class CgroupCpu:
    """A cgroup v2 child ``liveupdate-trainer`` with cpu.max = share x trainer cpus x period."""

    NAME = "liveupdate-trainer"
    PERIOD_US = 100_000

    def __init__(self, root: str | Path = "/"):
        base = Path(root) / "sys/fs/cgroup"
        # Unified hierarchy at /sys/fs/cgroup, or at .../unified on hybrid hosts.
        self.path = next(
            (
                p
                for p in (base, base / "unified")
                if "cpu" in (_read(p / "cgroup.controllers") or "").split()
            ),
            None,
        )

    def unavailable_reason(self) -> str | None:
        if self.path is None:
            return "no cgroup v2 hierarchy with the cpu controller"
        return None

    def apply(self, trainer_pids: list[int], share: float, trainer_cpus: int) -> PartitionResult:
        reason = self.unavailable_reason()
        if reason:
            return PartitionResult("cgroup", f"{NOT_AVAILABLE}: {reason}")
        assert self.path is not None
        quota = max(1000, int(self.PERIOD_US * share * max(1, trainer_cpus)))
        try:
            (self.path / "cgroup.subtree_control").write_text("+cpu\n")
            group = self.path / self.NAME
            group.mkdir(exist_ok=True)
            (group / "cpu.max").write_text(f"{quota} {self.PERIOD_US}\n")
            for pid in trainer_pids:
                with (group / "cgroup.procs").open("a") as f:
                    f.write(f"{pid}\n")
        except OSError as exc:  # read-only or delegated elsewhere (containers)
            return PartitionResult("cgroup", f"{NOT_AVAILABLE}: {exc}")
        return PartitionResult("cgroup", "applied", {"cpu.max": f"{quota} {self.PERIOD_US}"})


def partition(
    root: str | Path,
    inference_pids: list[int],
    trainer_pids: list[int],
    *,
    cache_pct: int,
    bandwidth_pct: int,
    trainer_share: float,
    trainer_cpus: int,
) -> list[PartitionResult]:
    """Hardware partitioning where resctrl exists; the cgroup cpu.max limit where it does not."""
    results = [Resctrl(root).apply(inference_pids, trainer_pids, cache_pct, bandwidth_pct)]
    if not results[0].applied:
        results.append(CgroupCpu(root).apply(trainer_pids, trainer_share, trainer_cpus))
    for r in results:
        log.info("partition %s: %s %s", r.mechanism, r.status, r.detail or "")
    return results
