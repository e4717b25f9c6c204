"""Shared pieces of the dlrm_core benchmarks: the Criteo-Kaggle shape, skewed id batches,
interleaved timing (variants alternate round by round, so machine noise hits all of them), and
the table + JSON output."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.model import DLRMConfig

# Rows of the 26 categorical tables of Criteo Kaggle (facebookresearch/dlrm's preprocessing).
CRITEO_KAGGLE_ROWS = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip

OUT_DIR = Path(__file__).resolve().parent / "out"


def active_rows(num_rows: int, share: float, gen: torch.Generator) -> torch.Tensor:
    """A random ``share`` of the rows (at least one), sorted: the active set."""
    k = max(1, int(num_rows * share))
    return torch.randperm(num_rows, generator=gen)[:k].sort().values


def skewed_ids(
    num_rows: int, hot: torch.Tensor, size: int, hot_share: float, gen: torch.Generator
) -> torch.Tensor:
    """(size,) ids: ``hot_share`` of them drawn from ``hot`` (recently trained, hence active
    rows are the popular ones), the rest uniform over the table."""
    from_hot = torch.rand(size, generator=gen) < hot_share
    uniform = torch.randint(0, num_rows, (size,), generator=gen)
    picks = hot[torch.randint(0, hot.numel(), (size,), generator=gen)]
    return torch.where(from_hot, picks, uniform)


def criteo_batch(
    names: Sequence[str],
    table_rows: Sequence[int],
    hot: Sequence[torch.Tensor],
    size: int,
    gen: torch.Generator,
    t: float = 0.0,
    hot_share: float = 0.8,
) -> SparseBatch:
    """A one-hot Criteo-shaped batch with 13 dense features and random labels."""
    values = tuple(
        skewed_ids(n, h, size, hot_share, gen) for n, h in zip(table_rows, hot, strict=True)
    )
    offsets = tuple(torch.arange(size) for _ in names)
    return SparseBatch(
        tuple(names),
        values,
        offsets,
        torch.randn(size, 13, generator=gen),
        (torch.rand(size, generator=gen) < 0.25).float(),
        torch.full((size,), t, dtype=torch.float64),
        torch.arange(size) + int(t) * size,
    )


@dataclass(frozen=True)
class CriteoWorkload:
    """The Criteo-Kaggle reference DLRM over its tables scaled by a factor, each table's hot
    rows (the popular, hence active, ids) and skewed batches over them."""

    config: DLRMConfig
    rows: list[int]  # rows of each table
    hot: list[torch.Tensor]  # each table's hot ids, sorted

    def batches(
        self, count: int, size: int, gen: torch.Generator, timed: bool = True
    ) -> list[SparseBatch]:
        """``count`` batches of ``size``; ``timed``: batch i at stream time i (else 0)."""
        names = self.config.feature_names
        return [
            criteo_batch(names, self.rows, self.hot, size, gen, t=float(i) if timed else 0.0)
            for i in range(count)
        ]


def criteo_workload(scale: float, hot_share: float, gen: torch.Generator) -> CriteoWorkload:
    """The reference DLRM's shape over the Criteo-Kaggle tables x ``scale`` (at least 4 rows
    each), ``hot_share`` of each table's rows hot."""
    rows = [max(4, int(n * scale)) for n in CRITEO_KAGGLE_ROWS]
    hot = [active_rows(n, hot_share, gen) for n in rows]
    return CriteoWorkload(DLRMConfig.criteo_reference(rows), rows, hot)


def interleaved(
    variants: dict[str, Callable[[], object]], rounds: int, reps: int, warmup: int = 2
) -> dict[str, list[float]]:
    """CPU seconds of this thread per call of each variant: ``rounds`` rounds, each timing
    ``reps`` calls of every variant in turn. Returns the per-round means. Thread CPU time
    equals latency for single-threaded torch work, minus the time the OS ran other jobs."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.thread_time()
            for _ in range(reps):
                fn()
            times[name].append((time.thread_time() - start) / reps)
    return times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def machine() -> dict[str, object]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(c: object) -> str:
    if isinstance(c, float):
        return f"{c:.4g}" if abs(c) < 1e5 else f"{c:,.0f}"
    return str(c)


def write_json(name: str, payload: dict[str, object]) -> Path:
    OUT_DIR.mkdir(exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    print(f"\nwrote {path}")
    return path
