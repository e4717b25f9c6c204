"""Is the embedding update of a training window low-rank? (the paper's "over 80% of update
variance lies in under 5% of the components").

Shapes: n = rows of a table touched in the window, D = embedding dim.

A DLRM is trained on a warm-up stretch of the stream, then over a window; for every table we
collect two (n, D) matrices over the window's touched rows:
- ``grad``: the sum of the loss gradients of those rows over the window's steps;
- ``update``: what the optimizer actually changed, W_after - W_before (SGD: -lr * grad exactly;
  Adagrad: per-coordinate rescaled).
``spectrum`` gives the principal-component variances of a matrix (columns centred; the
uncentred "energy" too, which is what a rank-r delta A.B must capture). ``top_share(e, k)`` is
the share of the total in the top k components. The claim is judged with k = max(1,
floor(0.05 * D)) components, i.e. 1/16 of them at D = 16 (5% of 16 is below one component).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from dlrm_core.batch import SparseBatch
from dlrm_core.metrics import auc
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.schema import StreamSchema

FRACTIONS = (0.05, 0.10, 0.25)
CLAIM_FRACTION, CLAIM_SHARE = 0.05, 0.80


def spectrum(matrix: torch.Tensor, center: bool = True) -> torch.Tensor:
    """(min(n, D),) variances (squared singular values) of an (n, D) matrix, largest first."""
    m = matrix.to(torch.float64)
    if center:
        m = m - m.mean(dim=0, keepdim=True)
    return torch.linalg.svdvals(m) ** 2


def top_share(energies: torch.Tensor, k: int) -> float:
    """Share of the total in the k largest components (nan for an all-zero matrix)."""
    total = float(energies.sum())
    return float(energies[:k].sum()) / total if total > 0 else math.nan


def components_for(energies: torch.Tensor, share: float) -> int:
    """Fewest components whose sum reaches ``share`` of the total (0 for an all-zero matrix)."""
    total = float(energies.sum())
    if total <= 0:
        return 0
    cum = torch.cumsum(energies, 0) / total
    return int(torch.searchsorted(cum, torch.tensor(share - 1e-12, dtype=cum.dtype))) + 1


def n_components(fraction: float, dim: int) -> int:
    """The number of components that "fraction of the components" means for dimension D."""
    return max(1, math.floor(fraction * dim + 1e-9))


@dataclass(frozen=True)
class MatrixReport:
    rows: int
    dim: int
    top: dict[str, float]  # "5%" -> centred variance share of the top n_components(5%, D)
    top_energy: dict[str, float]  # the same, uncentred
    k80: int  # components for 80% of the centred variance
    k80_energy: int

    @property
    def claim_holds(self) -> bool:
        return self.top[f"{round(CLAIM_FRACTION * 100)}%"] >= CLAIM_SHARE

    @property
    def rank_limited(self) -> bool:
        """Fewer touched rows than D: low rank by construction, not by learning."""
        return self.rows < self.dim


def report(matrix: torch.Tensor) -> MatrixReport:
    n, dim = matrix.shape
    centred, raw = spectrum(matrix, True), spectrum(matrix, False)
    keys = {f"{round(f * 100)}%": n_components(f, dim) for f in FRACTIONS}
    return MatrixReport(
        rows=int(n),
        dim=int(dim),
        top={name: top_share(centred, k) for name, k in keys.items()},
        top_energy={name: top_share(raw, k) for name, k in keys.items()},
        k80=components_for(centred, CLAIM_SHARE),
        k80_energy=components_for(raw, CLAIM_SHARE),
    )


@dataclass(frozen=True)
class WindowUpdates:
    """Per table: touched rows (n,), summed gradient (n, D), applied update (n, D)."""

    names: tuple[str, ...]
    rows: tuple[torch.Tensor, ...]
    grad: tuple[torch.Tensor, ...]
    update: tuple[torch.Tensor, ...]
    window_auc: float  # progressive AUC over the window (each batch scored before its step)
    skipped: int  # steps with a non-finite loss, not taken


def make_optimizer(name: str, params: Sequence[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Plain SGD (no momentum) or Adagrad, both with sparse-gradient support."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adagrad', got {name!r}")


def _step(model: DLRM, opt: torch.optim.Optimizer, batch: SparseBatch) -> torch.Tensor | None:
    """One training step; returns the detached logits, or None (no step) if the loss is not
    finite."""
    opt.zero_grad(set_to_none=True)
    logits = model(batch)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
    if not torch.isfinite(loss):
        return None
    loss.backward()
    return logits.detach()


def _weight(table: nn.Module) -> torch.Tensor:
    if not isinstance(table, nn.EmbeddingBag):
        raise TypeError(f"the analysis needs plain EmbeddingBag tables, got {type(table).__name__}")
    return table.weight


def train_and_collect(
    model: DLRM,
    optimizer: str,
    lr: float,
    warmup: Sequence[SparseBatch],
    window: Sequence[SparseBatch],
) -> WindowUpdates:
    """Trains ``model`` in place on ``warmup`` then ``window``; collects the window's updates."""
    tables = [_weight(t) for t in model.sparse_arch.tables]
    opt = make_optimizer(optimizer, list(model.parameters()), lr)
    skipped = 0
    for batch in warmup:
        if _step(model, opt, batch) is None:
            skipped += 1
            continue
        opt.step()
    idx: list[list[torch.Tensor]] = [[] for _ in tables]
    grads: list[list[torch.Tensor]] = [[] for _ in tables]
    deltas: list[list[torch.Tensor]] = [[] for _ in tables]
    scores, labels = [], []
    for batch in window:
        logits = _step(model, opt, batch)
        if logits is None:
            skipped += 1
            continue
        scores.append(logits)
        labels.append(batch.labels)
        touched = []
        for t, w in enumerate(tables):
            g = w.grad
            if g is None:
                touched.append(torch.zeros(0, dtype=torch.int64))
                continue
            g = g.coalesce() if g.is_sparse else g.to_sparse().coalesce()
            rows = g.indices()[0]
            idx[t].append(rows)
            grads[t].append(g.values())
            touched.append(rows)
        before = [w.detach()[r].clone() for w, r in zip(tables, touched, strict=True)]
        opt.step()
        for t, (w, r) in enumerate(zip(tables, touched, strict=True)):
            deltas[t].append(w.detach()[r] - before[t])
    summed = [_sum_by_row(idx[t], grads[t], deltas[t], w.shape[1]) for t, w in enumerate(tables)]
    window_auc = auc(torch.cat(labels), torch.cat(scores)) if scores else math.nan
    return WindowUpdates(
        names=model.config.feature_names,
        rows=tuple(rows for rows, _, _ in summed),
        grad=tuple(grad for _, grad, _ in summed),
        update=tuple(update for _, _, update in summed),
        window_auc=window_auc,
        skipped=skipped,
    )


def _sum_by_row(
    rows: list[torch.Tensor], grads: list[torch.Tensor], deltas: list[torch.Tensor], dim: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One table's window: its distinct rows (U,), sorted, with their gradients (U, D) and
    updates (U, D) summed over the steps (each step's rows (k,), gradients and updates (k, D))."""
    if not rows:
        empty = torch.zeros(0, dim)
        return torch.zeros(0, dtype=torch.int64), empty, empty
    uniq, where = torch.unique(torch.cat(rows), return_inverse=True)
    grad = torch.zeros(len(uniq), dim).index_add_(0, where, torch.cat(grads))
    update = torch.zeros(len(uniq), dim).index_add_(0, where, torch.cat(deltas))
    return uniq, grad, update


@dataclass(frozen=True)
class RunConfig:
    dims: tuple[int, ...] = (16, 64, 128)
    optimizers: tuple[tuple[str, float], ...] = (("sgd", 0.1), ("adagrad", 0.05))
    warmup: float = 0.5  # share of the batches trained on before the window
    window: float = 0.3  # share of the batches in the window
    bottom_hidden: tuple[int, ...] = (64,)
    top_hidden: tuple[int, ...] = (64, 32)
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.dims or any(not 1 <= d <= 4096 for d in self.dims):
            raise ValueError(f"dims must be in [1, 4096], got {self.dims}")
        if not (0 <= self.warmup < 1 and 0 < self.window <= 1 - self.warmup):
            raise ValueError("need 0 <= warmup < 1 and 0 < window <= 1 - warmup")
        for name, lr in self.optimizers:
            make_optimizer(name, [nn.Parameter(torch.zeros(1))], 0.1)
            if not 0 < lr <= 10:
                raise ValueError(f"learning rate of {name} must be in (0, 10], got {lr}")


def analyze(
    batches: Sequence[SparseBatch],
    schema: StreamSchema,
    cfg: RunConfig,
    on_record: Callable[[dict], None] | None = None,
) -> list[dict]:
    """For each D and optimizer: train from the same initial model, report every table.

    Returns one record per (D, optimizer) with the window AUC and, per table, the reports of
    the summed gradient and of the applied update (``MatrixReport`` fields as a dict);
    ``on_record`` sees each record as soon as it is ready (progress).
    """
    n = len(batches)
    n_warm = int(n * cfg.warmup)
    n_window = max(1, int(n * cfg.window))
    warmup, window = batches[:n_warm], batches[n_warm : n_warm + n_window]
    records = []
    for dim in cfg.dims:
        torch.manual_seed(cfg.seed)
        config = DLRMConfig.from_schema(schema, dim, cfg.bottom_hidden, cfg.top_hidden)
        initial = DLRM(config).state_dict()
        for name, lr in cfg.optimizers:
            model = DLRM(config)
            model.load_state_dict(initial)
            upd = train_and_collect(model, name, lr, warmup, window)
            tables = []
            for t, table in enumerate(upd.names):
                if upd.rows[t].numel() == 0:
                    continue
                tables.append(
                    {
                        "table": table,
                        "grad": asdict(report(upd.grad[t])),
                        "update": asdict(report(upd.update[t])),
                    }
                )
            records.append(
                {
                    "dim": dim,
                    "optimizer": name,
                    "lr": lr,
                    "warmup_events": sum(len(b) for b in warmup),
                    "window_events": sum(len(b) for b in window),
                    "window_auc": upd.window_auc,
                    "skipped_steps": upd.skipped,
                    "tables": tables,
                }
            )
            if on_record is not None:
                on_record(records[-1])
    return records
