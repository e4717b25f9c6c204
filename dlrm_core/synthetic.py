"""A synthetic drifting click stream for demos and scale tests, deterministic by seed.

Generative story (event i happens at ``i / events_per_second`` s):
- Users and items are drawn with Zipf popularity (exponent ``zipf_exponent``) over the ids
  born so far. A share ``new_id_share`` of each id space is born during the stream, at a steady
  rate, and a share ``fresh_event_share`` of events goes to an id born within the last
  ``fresh_window_events`` events (new items/users get traffic at once, as in a real feed).
  Ranks map to table rows through a seeded affine permutation, so popularity is not tied to
  the row number. Row 0 is never drawn (it means "missing", as in the readers).
- Every id's latent vectors are a pure function of (seed, id) through a 64-bit hash, so a
  10^7-row table costs no memory: nothing is stored per id.
- User u's taste at time t is ``p_u(t) = cos(w t) a_u + sin(w t) b_u`` with ``w =
  drift_per_hour / 3600``: a_u, b_u are independent N(0, I_k) vectors, so after a quarter turn
  the taste is unrelated to where it started. Items have fixed q_i and a bias.
- The click logit is ``base_logit + affinity_scale * <p_u(t), q_i> / sqrt(k) + item bias +
  context biases + dense_scale * dense[:, 0] + N(0, noise_std^2)`` and the label is Bernoulli
  of its sigmoid. ``true_logit`` returns the noiseless logit (optionally at another time: a
  "stale oracle" that shows what drift costs a model that stopped learning).
Sparse features: ``user_id``, ``item_id``, ``ctx_0..`` (context ids with their own biases, no
births). Dense: ``n_dense`` standard normal values, the first one informative.
Batch k is generated from ``numpy.random.default_rng([seed, k])``, so ``batch(k)`` gives any
batch directly and the stream is generated lazily, one batch at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.schema import SparseFeatureSpec, StreamSchema

MAX_ROWS = 10**9
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 0
    num_events: int = 1_000_000
    batch_size: int = 512
    events_per_second: float = 100.0
    user_rows: int = 100_000
    item_rows: int = 100_000
    context_rows: tuple[int, ...] = (1_000, 50)
    n_dense: int = 4
    zipf_exponent: float = 1.05
    latent_dim: int = 8
    affinity_scale: float = 3.0
    item_bias_scale: float = 0.5
    context_scale: float = 0.3
    dense_scale: float = 0.5
    base_logit: float = -1.5  # with the defaults, about 30% clicks
    noise_std: float = 0.3
    drift_per_hour: float = 1.0  # radians per hour of event time that user tastes rotate
    new_id_share: float = 0.2
    fresh_event_share: float = 0.1
    fresh_window_events: int = 50_000

    def __post_init__(self) -> None:
        checks = {
            "num_events": 1 <= self.num_events <= 10**12,
            "batch_size": 1 <= self.batch_size <= 1 << 20,
            "events_per_second": 0 < self.events_per_second <= 1e9,
            "user_rows": 2 <= self.user_rows <= MAX_ROWS,
            "item_rows": 2 <= self.item_rows <= MAX_ROWS,
            "context_rows": all(2 <= n <= MAX_ROWS for n in self.context_rows),
            "n_dense": 0 <= self.n_dense <= 1024,
            "zipf_exponent": 0 < self.zipf_exponent <= 5,
            "latent_dim": 1 <= self.latent_dim <= 1024,
            "drift_per_hour": 0 <= self.drift_per_hour <= 1e6,
            "new_id_share": 0 <= self.new_id_share < 1,
            "fresh_event_share": 0 <= self.fresh_event_share <= 1,
            "fresh_window_events": self.fresh_window_events >= 1,
            "noise_std": self.noise_std >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = {name: getattr(self, name) for name in bad}
            raise ValueError(f"SyntheticConfig out of bounds: {values}")
        for name in ("affinity_scale", "item_bias_scale", "context_scale", "dense_scale"):
            if not (math.isfinite(getattr(self, name)) and abs(getattr(self, name)) <= 100):
                raise ValueError(f"{name} must be finite and within [-100, 100]")
        if not math.isfinite(self.base_logit):
            raise ValueError("base_logit must be finite")

    @property
    def num_batches(self) -> int:
        return -(-self.num_events // self.batch_size)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hashed_normal(seed: int, salt: int, ids: np.ndarray, dim: int) -> np.ndarray:
    """(n, dim) standard normals that depend only on (seed, salt, id): Box-Muller on hashes."""
    mask = 2**64 - 1
    base = _mix(np.array([(seed & mask) ^ (salt * int(_GOLDEN) & mask)], dtype=np.uint64))
    j = np.arange(2 * dim, dtype=np.uint64)
    with np.errstate(over="ignore"):
        key = ids.astype(np.uint64)[:, None] * np.uint64(0x100000001B3) + base + j * _GOLDEN
    bits = _mix(_mix(key)) >> np.uint64(11)  # 53 random bits each
    u = (bits.astype(np.float64) + 0.5) / float(1 << 53)  # in (0, 1)
    return np.sqrt(-2.0 * np.log(u[:, :dim])) * np.cos(2.0 * np.pi * u[:, dim:])


class _IdSpace:
    """Zipf draws over the ids born so far, mapped to rows 1..rows-1 by an affine permutation."""

    def __init__(self, rows: int, cfg: SyntheticConfig, salt: int, births: bool) -> None:
        self.size = rows - 1  # row 0 is "missing"
        share = cfg.new_id_share if births else 0.0
        self.initial = max(1, self.size - int(self.size * share))
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, salt])
        a = int(rng.integers(self.size // 3, max(self.size // 3 + 1, 2 * self.size // 3))) | 1
        while math.gcd(a, self.size) != 1:
            a += 2
        self.a, self.b = a % self.size or 1, int(rng.integers(0, self.size))

    def born(self, events: np.ndarray) -> np.ndarray:
        """(n,) number of ids that exist at each event index."""
        grow = (self.size - self.initial) * events // self.cfg.num_events
        return self.initial + grow

    def draw(self, rng: np.random.Generator, events: np.ndarray) -> np.ndarray:
        """(n,) int64 rows for the events at the given global indices."""
        cfg, n = self.cfg, events.shape[0]
        live = self.born(events)
        s = cfg.zipf_exponent
        u = rng.random(n)
        # Continuous power law on [0.5, live + 0.5), rounded: close to discrete Zipf even at
        # the head (rank r gets about the mass of [r - 0.5, r + 0.5)).
        lo, hi = 0.5, live.astype(np.float64) + 0.5
        if s == 1.0:
            x = lo * (hi / lo) ** u
        else:
            x = (lo ** (1.0 - s) + u * (hi ** (1.0 - s) - lo ** (1.0 - s))) ** (1.0 / (1.0 - s))
        rank = np.clip(np.floor(x + 0.5).astype(np.int64) - 1, 0, live - 1)
        window = np.maximum(1, (self.size - self.initial) * cfg.fresh_window_events
                            // cfg.num_events)  # fmt: skip
        fresh_lo = np.maximum(self.initial, live - window)
        fresh = (rng.random(n) < cfg.fresh_event_share) & (live > self.initial)
        pick = fresh_lo + (rng.random(n) * (live - fresh_lo)).astype(np.int64)
        return self.rows_of(np.where(fresh, pick, rank))

    def rows_of(self, ranks: np.ndarray) -> np.ndarray:
        """Table rows of popularity ranks (0 = most popular / first born)."""
        return 1 + (ranks * self.a + self.b) % self.size


class SyntheticStream:
    """Iterable of SparseBatches (lazily generated) with its StreamSchema."""

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = cfg = config or SyntheticConfig()
        self.users = _IdSpace(cfg.user_rows, cfg, salt=1, births=True)
        self.items = _IdSpace(cfg.item_rows, cfg, salt=2, births=True)
        self.contexts = [
            _IdSpace(n, cfg, salt=10 + j, births=False) for j, n in enumerate(cfg.context_rows)
        ]
        sparse = [SparseFeatureSpec("user_id", cfg.user_rows)]
        sparse.append(SparseFeatureSpec("item_id", cfg.item_rows))
        sparse += [SparseFeatureSpec(f"ctx_{j}", n) for j, n in enumerate(cfg.context_rows)]
        self.schema = StreamSchema(tuple(sparse), tuple(f"d{j}" for j in range(cfg.n_dense)))

    def __len__(self) -> int:
        return self.config.num_batches

    def __iter__(self) -> Iterator[SparseBatch]:
        return (self.batch(k) for k in range(self.config.num_batches))

    def batch(self, k: int) -> SparseBatch:
        cfg = self.config
        if not 0 <= k < cfg.num_batches:
            raise IndexError(f"batch {k} out of range [0, {cfg.num_batches})")
        rng = np.random.default_rng([cfg.seed, k])
        events = np.arange(k * cfg.batch_size, min((k + 1) * cfg.batch_size, cfg.num_events))
        n = events.shape[0]
        ids = [self.users.draw(rng, events), self.items.draw(rng, events)]
        ids += [space.draw(rng, events) for space in self.contexts]
        dense = rng.standard_normal((n, cfg.n_dense))
        times = events / cfg.events_per_second
        logit = self._logit(ids, dense, times) + cfg.noise_std * rng.standard_normal(n)
        labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
        return SparseBatch(
            keys=self.schema.keys,
            values=tuple(torch.from_numpy(v) for v in ids),
            offsets=tuple(torch.arange(n, dtype=torch.int64) for _ in ids),
            dense=torch.from_numpy(dense.astype(np.float32)),
            labels=torch.from_numpy(labels),
            timestamps=torch.from_numpy(times.astype(np.float64)),
            request_ids=torch.from_numpy(events.astype(np.int64)),
        )

    def taste(self, users: np.ndarray, times: np.ndarray) -> np.ndarray:
        """(n, k) user taste vectors p_u(t)."""
        cfg = self.config
        theta = (cfg.drift_per_hour / 3600.0) * times[:, None]
        a = hashed_normal(cfg.seed, 101, users, cfg.latent_dim)
        b = hashed_normal(cfg.seed, 102, users, cfg.latent_dim)
        return np.cos(theta) * a + np.sin(theta) * b

    def _logit(self, ids: list[np.ndarray], dense: np.ndarray, times: np.ndarray) -> np.ndarray:
        cfg = self.config
        p = self.taste(ids[0], times)
        q = hashed_normal(cfg.seed, 201, ids[1], cfg.latent_dim)
        logit = cfg.base_logit + cfg.affinity_scale * (p * q).sum(1) / math.sqrt(cfg.latent_dim)
        logit += cfg.item_bias_scale * hashed_normal(cfg.seed, 202, ids[1], 1)[:, 0]
        for j, ctx in enumerate(ids[2:]):
            logit += cfg.context_scale * hashed_normal(cfg.seed, 300 + j, ctx, 1)[:, 0]
        if cfg.n_dense:
            logit += cfg.dense_scale * dense[:, 0]
        return logit

    def true_logit(self, batch: SparseBatch, at_time: float | None = None) -> torch.Tensor:
        """(B,) noiseless logits of a batch of this stream; ``at_time`` freezes user tastes
        at that time instead of each event's own (a model that stopped learning then)."""
        ids = [v.numpy() for v in batch.values]
        times = batch.timestamps.numpy()
        if at_time is not None:
            times = np.full_like(times, at_time)
        logit = self._logit(ids, batch.dense.numpy().astype(np.float64), times)
        return torch.from_numpy(logit)
