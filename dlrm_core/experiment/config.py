"""Configuration of a freshness experiment: clock, windows, label delay, link, strategies.

Every period below (sync, label delay, window, prune age, rebase) is in seconds of the replay
clock. With ``qps`` set, event i of the stream happens at ``i / qps`` s (a production-like event
rate, so a "10-minute" sync means 600 * qps events); with ``qps=None`` the stream's own
timestamps are used, shifted so the first event is at 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dlrm_core.experiment.fleet_config import FleetConfig

STRATEGY_NAMES = (
    "stale",
    "oracle",
    "full_sync",
    "delta_sync",
    "prioritized_delta",
    "liveupdate",
    "liveupdate_dense",
    "hybrid",
)
PRIORITIES = ("magnitude", "freshness_magnitude")
MAX_REUSE = 16
TB = 1e12


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")


@dataclass(frozen=True)
class LinkConfig:
    """The cluster -> node link: a transfer of b bytes takes b * scale / bandwidth seconds.

    ``scale`` projects the experiment's tables to production size: with ``target_table_bytes``
    set, scale = target / (bytes of the experiment's tables), e.g. 200 TB on 100 GbE. The
    projection assumes the share of rows a period changes is the same at both sizes. One
    transfer at a time: a sync that falls due while the link is busy starts when it frees up.
    """

    bandwidth_gbps: float = 100.0
    target_table_bytes: float | None = 200 * TB  # None: no projection (scale 1)
    scale_factor: float = 1.0  # the --link-scales sweep: the projection's scale times this

    def __post_init__(self) -> None:
        _check_range("bandwidth_gbps", self.bandwidth_gbps, 1e-6, 1e6)
        _check_range("scale_factor", self.scale_factor, 1e-6, 1e6)
        if self.target_table_bytes is not None:
            _check_range("target_table_bytes", self.target_table_bytes, 1.0, 1e18)

    @property
    def bytes_per_second(self) -> float:
        return self.bandwidth_gbps * 1e9 / 8.0


@dataclass(frozen=True)
class LiveUpdateParams:
    tau: float = 0.95  # energy share the kept rank must carry
    r_min: int = 1
    # up to full rank (r = D = 16), the controller trading rank for rows once they fill the
    # budget (issue 14, measured against r_max 8); r_max above D is clamped to D, the initial
    # rank to [r_min, r_max]. The initial rank holds only until the first adaptation: the
    # warm-up's gradient Gram then picks the start rank (rank.py), which took the 2M synthetic
    # stream's big tables to r = 16 in the first hour and kept MovieLens-100k's item table low.
    r_max: int = 16
    initial_rank: int = 4
    budget_pct: float = 2.0  # memory budget, % of the bytes of all embedding tables
    prune_age_s: float | None = 3600.0  # idle seconds before a row leaves the active set
    rebase_period_s: float | None = None  # the hybrid's delta rebases (None: every sync period)
    # the hybrid's delta rebase ships the rows the cluster changed in at least this many steps
    # since they were last shipped (1: every changed row). 2, measured on the 2M synthetic
    # stream (issue 14): 0.25x delta_sync's bytes instead of 0.66x, and a higher AUC (fewer
    # local corrections dropped for rows the cluster barely moved)
    rebase_min_steps: int = 2
    lr_a: float = 0.05
    lr_b: float = 1e-3
    lr_top: float = 0.0  # Adagrad on the top MLP's last layer(s) (0: the MLPs stay frozen)
    top_layers: int = 1  # how many of its last linear layers
    reuse: int = 0  # extra optimizer passes per batch; 0 = one pass, as the cluster takes
    adapt_every: int = 50
    publish_every: int = 10
    allocation: str = "benefit"  # "benefit" (measured gradient energy) or "even"

    def __post_init__(self) -> None:
        _check_range("tau", self.tau, 1e-6, 1.0)
        if not (1 <= self.r_min <= self.r_max <= 64 and 1 <= self.initial_rank <= 64):
            raise ValueError(
                f"need 1 <= r_min <= r_max <= 64 and 1 <= initial_rank <= 64, got "
                f"{self.r_min}, {self.r_max}, {self.initial_rank}"
            )
        _check_range("budget_pct", self.budget_pct, 1e-4, 100.0)
        for name in ("prune_age_s", "rebase_period_s"):
            value = getattr(self, name)
            if value is not None:
                _check_range(name, value, 1e-3, 1e9)
        _check_range("rebase_min_steps", self.rebase_min_steps, 1, 255)
        _check_range("lr_a", self.lr_a, 1e-9, 10.0)
        _check_range("lr_b", self.lr_b, 1e-9, 10.0)
        _check_range("lr_top", self.lr_top, 0.0, 10.0)
        _check_range("top_layers", self.top_layers, 1, 16)
        if not 0 <= self.reuse <= MAX_REUSE:
            raise ValueError(f"reuse must be in [0, {MAX_REUSE}], got {self.reuse}")
        if self.allocation not in ("benefit", "even"):
            raise ValueError(f"allocation must be 'benefit' or 'even', got {self.allocation!r}")


@dataclass(frozen=True)
class ExperimentConfig:
    seed: int = 0
    qps: float | None = 10.0  # events per second of the replay clock; None: raw timestamps
    window_s: float = 3600.0  # metric windows
    fine_window_s: float = 600.0  # the same metrics on shorter windows, for the curves
    label_delay_s: float = 60.0  # the same for every strategy (and the cluster)
    sync_period_s: float = 600.0  # full_sync, delta_sync, prioritized_delta
    pretrain_fraction: float = 0.3  # head of the stream the base model is trained on
    pretrain_epochs: int = 1
    # pretraining and the cluster: full training with sparse embedding gradients. Adagrad by
    # default, so the cluster and LiveUpdate (row-wise Adagrad on A) use the same kind of
    # optimizer and the comparison measures freshness, not SGD against Adagrad.
    optimizer: str = "adagrad"  # or "sgd"
    lr_dense: float = 0.05
    lr_sparse: float = 0.05
    embedding_dim: int = 16
    bottom_hidden: tuple[int, ...] = (64,)
    top_hidden: tuple[int, ...] = (64, 32)
    top_p_pct: float = 20.0  # prioritized_delta: share of the changed rows sent each sync
    priority: str = "magnitude"  # or "freshness_magnitude" (Ekko-style)
    strategies: tuple[str, ...] = STRATEGY_NAMES
    link: LinkConfig = field(default_factory=LinkConfig)
    live: LiveUpdateParams = field(default_factory=LiveUpdateParams)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    torch_threads: int = 1
    audit: bool = False  # replay again with every not-yet-due label permuted (audit.py)

    def __post_init__(self) -> None:
        if self.qps is not None:
            _check_range("qps", self.qps, 1e-6, 1e9)
        _check_range("window_s", self.window_s, 1e-3, 1e9)
        _check_range("fine_window_s", self.fine_window_s, 1e-3, 1e9)
        _check_range("label_delay_s", self.label_delay_s, 0.0, 1e8)
        _check_range("sync_period_s", self.sync_period_s, 1e-3, 1e9)
        _check_range("pretrain_fraction", self.pretrain_fraction, 0.0, 0.95)
        if not 1 <= self.pretrain_epochs <= 100:
            raise ValueError(f"pretrain_epochs must be in [1, 100], got {self.pretrain_epochs}")
        if self.optimizer not in ("sgd", "adagrad"):
            raise ValueError(f"optimizer must be 'sgd' or 'adagrad', got {self.optimizer!r}")
        _check_range("lr_dense", self.lr_dense, 0.0, 100.0)
        _check_range("lr_sparse", self.lr_sparse, 0.0, 100.0)
        if not 1 <= self.embedding_dim <= 1024:
            raise ValueError(f"embedding_dim must be in [1, 1024], got {self.embedding_dim}")
        _check_range("top_p_pct", self.top_p_pct, 1e-6, 100.0)
        if self.priority not in PRIORITIES:
            raise ValueError(f"priority must be one of {PRIORITIES}, got {self.priority!r}")
        unknown = [s for s in self.strategies if s not in STRATEGY_NAMES]
        if unknown or not self.strategies or len(set(self.strategies)) != len(self.strategies):
            raise ValueError(
                f"strategies must be distinct names from {STRATEGY_NAMES}, got {self.strategies}"
            )
        if not 1 <= self.torch_threads <= 256:
            raise ValueError(f"torch_threads must be in [1, 256], got {self.torch_threads}")
