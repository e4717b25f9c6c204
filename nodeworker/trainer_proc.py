"""The trainer process: joins served requests with their labels (nodeworker.feed: it reads what
inference appended to the shared-memory rings), takes LoRA steps on the joined samples, on its
own cores, at the duty cycle the QoS controller allows, and publishes factor versions into
shared memory. The join runs whatever the duty (paused too): it is bookkeeping that keeps the
rings drained and the label window's timeouts on time, and only the steps are throttled; its
cpu time is reported in the stats (feed_cpu_s).

It maps the base tables copy-on-write, so its folds (pruned rows) stay private until inference
installs the version that carries them: before writing version v it sends the rows folded since
the last version through ``patch_conn``, and v's ``aux`` says how many patch messages precede it.
It also builds each version's ServingDelta (on its own cpus, charged to its duty cycle), so the
inference side only copies it out of shared memory.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlrm_core.checkpoint import load_model, read_container, write_container
from dlrm_core.live_embedding import LiveEmbeddingConfig
from dlrm_core.rank import RankPolicy
from dlrm_core.serving import ServingDelta
from nodeworker import placement
from nodeworker.feed import Feed, FeedConfig, FeedRings
from nodeworker.qos import DutyCycle
from nodeworker.shared_memory import SharedFactors, TableCapacity, map_base_tables

log = logging.getLogger(__name__)

PATCH_KIND = "base-patch"
FEED_PERIOD_S = 0.05  # joined rows wait at most this long for a training batch to fill


def rank_policy(policy: dict[str, Any], dim: int) -> RankPolicy:
    """The RankPolicy of a validated node policy (protocol.validate_policy)."""
    r_max = min(int(policy["r_max"]), dim)
    return RankPolicy(
        tau=float(policy["tau"]),
        r_min=min(int(policy["r_min"]), r_max),
        r_max=r_max,
        max_age=float(policy["prune_age_s"]),
        fold_evicted=policy["prune_action"] == "fold",
    )


@dataclass(frozen=True)
class TrainerSetup:
    checkpoint: str  # base model (MLPs; tables come from shm_dir)
    shm_dir: str
    capacities: dict[str, TableCapacity]
    policy: dict[str, Any]  # validated node policy
    cpus: tuple[int, ...]
    start_version: int  # versions published continue after this
    restore_dir: str | None = None  # factors to import at start (a snapshot)
    publish_interval_s: float = 0.2
    lr_a: float = 0.05
    lr_b: float = 1e-3
    adapt_every: int = 50
    stats_interval_s: float = 0.25
    feed: FeedConfig = FeedConfig()


def snapshot_factors(trainer, folded: dict[str, set[int]], directory: Path) -> dict[str, str]:
    """Factors (export_factors) and the rows folded into the base since the checkpoint."""
    directory.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, live in trainer.lives.items():
        digests[name] = live.export_factors(directory / f"{name}.factors", name)
        ids = torch.tensor(sorted(folded.get(name, ())), dtype=torch.int64)
        rows = live.base.weight.detach()[ids].clone()
        write_container(
            directory / f"{name}.patch", PATCH_KIND, 1, {"table": name}, {"ids": ids, "rows": rows}
        )
    return digests


def read_patch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    _, tensors = read_container(path, PATCH_KIND, 1)
    return tensors["ids"], tensors["rows"]


class TrainerLoop:
    def __init__(self, setup: TrainerSetup, cmd_q, out_q, patch_conn, duty) -> None:
        from dlrm_core.trainer import LiveTrainer, TrainerConfig

        self.setup = setup
        self.cmd_q, self.out_q, self.patch_conn = cmd_q, out_q, patch_conn
        self.duty = duty
        model = load_model(setup.checkpoint)
        map_base_tables(model, Path(setup.shm_dir), shared=False)
        self.dim = model.config.embedding_dim
        self.model_config = model.config
        policy = rank_policy(setup.policy, self.dim)
        self.budget_pct = float(setup.policy["memory_budget_pct"])
        config = TrainerConfig(
            tables=tuple(setup.capacities),
            live=LiveEmbeddingConfig(rank=min(max(4, policy.r_min), policy.r_max)),
            policy=policy,
            budget_fraction=self.budget_pct / 100.0,
            lr_a=setup.lr_a,
            lr_b=setup.lr_b,
            adapt_every=setup.adapt_every,
            publish_every=10**9,  # this loop publishes on time, see publish()
        )
        self.trainer = LiveTrainer(model, config)
        self.shared = SharedFactors(Path(setup.shm_dir), setup.capacities, create=False)
        self.feed = Feed(
            FeedRings.open(Path(setup.shm_dir), create=False),
            model.config.feature_names,
            model.config.n_dense,
            setup.feed,
        )
        self.feed_cpu_s = 0.0
        self.version = setup.start_version
        self.patches_sent = 0
        self.folded: dict[str, set[int]] = {name: set() for name in self.trainer.lives}
        self.fresh: list[tuple[int, list[float]]] = []
        self.pending_label_times: list[np.ndarray] = []
        self.steps_since_publish = 0
        self.gate = DutyCycle()
        self.events: list[dict] = []
        if setup.restore_dir:
            for name, live in self.trainer.lives.items():
                path = Path(setup.restore_dir) / f"{name}.factors"
                if path.exists():
                    live.import_factors(path, name)
                    self.folded[name] = set(
                        read_patch(Path(setup.restore_dir) / f"{name}.patch")[0].tolist()
                    )
            self.publish(time.time())

    # --- publishing ---

    def publish(self, now: float) -> None:
        patch = {}
        for name, live in self.trainer.lives.items():
            ids = live.take_folded()
            if ids.numel():
                self.folded[name].update(ids.tolist())
                patch[name] = (ids.numpy(), live.base.weight.detach()[ids].numpy().copy())
        if patch:
            self.patch_conn.send(patch)  # before the version that needs it
            self.patches_sent += 1
        self.version += 1
        tables = {name: live.factors() for name, live in self.trainer.lives.items()}
        cfg = self.model_config
        serving = ServingDelta.from_factors(
            self.version, cfg.feature_names, cfg.table_sizes, tables
        )
        self.shared.write(self.version, now, tables, serving, aux=self.patches_sent)
        if self.pending_label_times:
            self.fresh.append((self.version, np.concatenate(self.pending_label_times).tolist()))
            self.pending_label_times = []
        self.steps_since_publish = 0
        self.last_publish = now

    # --- commands from the runtime ---

    def command(self, cmd: dict[str, Any]) -> Any:
        op = cmd["op"]
        now = time.time()
        if op == "policy":
            policy = rank_policy(cmd["policy"], self.dim)
            self.budget_pct = float(cmd["policy"]["memory_budget_pct"])
            for name, ctl in self.trainer.controllers.items():
                ctl.policy = policy
                weight = self.trainer.lives[name].base.weight
                budget = int(weight.numel() * weight.element_size() * self.budget_pct / 100)
                ctl.set_budget(min(budget, self._cap_bytes(name)), now)
            self.publish(now)
            return {"ranks": self.trainer.ranks()}
        if op == "snapshot":
            self.publish(now)
            digests = snapshot_factors(self.trainer, self.folded, Path(cmd["directory"]))
            return {"version": self.version, "digests": digests}
        if op == "pin":
            return {"cpus": list(placement.pin_process(tuple(cmd["cpus"])))}
        raise ValueError(f"unknown trainer command {op!r}")

    def _cap_bytes(self, name: str) -> int:
        cap = self.setup.capacities[name]
        return cap.a_floats * 4  # what the shared slot can hold

    # --- the loop ---

    def run(self) -> None:
        self.last_publish = time.time()
        last_stats = last_feed = 0.0
        while True:
            try:
                cmd = self.cmd_q.get_nowait()
            except queue.Empty:
                cmd = None
            if cmd is not None:
                if cmd["op"] == "stop":
                    self.send_stats()
                    return
                try:
                    self.out_q.put(("reply", (cmd["id"], True, self.command(cmd))))
                except Exception as exc:  # the runtime reports it to the caller
                    log.exception("trainer command %s failed", cmd["op"])
                    self.out_q.put(("reply", (cmd["id"], False, f"{type(exc).__name__}: {exc}")))
            now = time.time()
            if now - last_feed >= FEED_PERIOD_S:
                started = time.thread_time()
                self.feed.poll(now)
                self.feed_cpu_s += time.thread_time() - started
                last_feed = now
            if now - last_stats >= self.setup.stats_interval_s:
                self.send_stats()
                last_stats = now
            if (
                self.steps_since_publish
                and now - self.last_publish >= self.setup.publish_interval_s
            ):
                start = time.perf_counter()
                self.publish(now)
                self.gate.spend(time.perf_counter() - start)
            duty = self.duty.value
            wait = self.gate.wait_time(duty)
            if wait > 0:
                time.sleep(min(wait, 0.02))
                continue
            joined = self.feed.next_batch()
            if joined is None:
                time.sleep(max(0.0, min(0.02, last_feed + FEED_PERIOD_S - time.time())))
                continue
            batch, label_times = joined
            start = time.perf_counter()
            result = self.trainer.train_step(batch, time.time())
            self.gate.spend(time.perf_counter() - start)
            if result.skipped is None:
                self.pending_label_times.append(label_times)
                self.steps_since_publish += 1

    def send_stats(self) -> None:
        stats = self.trainer.stats
        memory = {}
        for name, report in self.trainer.memory().items():
            memory[name] = (report.overhead_bytes, report.base_bytes)
        events = [
            {
                "kind": "rank_change" if e.kind == "rank" else "prune",
                "ts": e.timestamp,
                "detail": {
                    "table": e.table,
                    "from": e.from_value,
                    "to": e.to_value,
                    "reason": e.reason,
                },
            }
            for e in self.trainer.drain_events()
        ]
        self.out_q.put(
            (
                "stats",
                {
                    "steps": stats.steps,
                    "samples": stats.samples,
                    "skipped": stats.skipped,
                    "version": self.version,
                    "ranks": self.trainer.ranks(),
                    "memory": memory,
                    "events": events,
                    "fresh": self.fresh,
                    "feed": self.feed.report(),
                    "feed_cpu_s": self.feed_cpu_s,
                },
            )
        )
        self.fresh = []


def trainer_main(setup: TrainerSetup, cmd_q, out_q, patch_conn, duty) -> None:
    """Entry point of the spawned trainer process."""
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"))
    if setup.cpus:
        placement.pin_process(setup.cpus)
    placement.configure_torch_threads(len(setup.cpus) or os.cpu_count() or 1)
    loop = TrainerLoop(setup, cmd_q, out_q, patch_conn, duty)
    out_q.put(("ready", loop.version))
    loop.run()
