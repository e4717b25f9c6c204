"""DLRM as small named modules, in the layout of torchrec's models/dlrm.py.

Shapes: B = batch, F = sparse features (one table each), D = embedding dim, N = rows of a table.

    dense (B, n_dense) --DenseArch--> (B, D) ------------------------------+
    ids of F features --SparseArch--> (B, F, D) --InteractionArch(dense, sparse)--> (B, D + P)
    (B, D + P) --OverArch--> (B,) logits,   P = (F + 1) * F / 2 pairwise dot products
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from dlrm_core.batch import SparseBatch
from dlrm_core.interaction import dot_interaction, pair_index
from dlrm_core.kernel import serving_kernel
from dlrm_core.schema import StreamSchema

if TYPE_CHECKING:
    from typing import Protocol

    class PooledDelta(Protocol):
        """A low-rank correction of the pooled embeddings (serving.ServingDelta, or the
        trainer's group_layout.LiveGroups)."""

        def add_to_(self, pooled: torch.Tensor, batch: SparseBatch) -> None: ...


CRITEO_BOTTOM_MLP = (512, 256, 64, 16)
CRITEO_TOP_MLP = (512, 256, 1)
CRITEO_N_DENSE = 13
CRITEO_EMBEDDING_DIM = 16


@dataclass(frozen=True)
class DLRMConfig:
    feature_names: tuple[str, ...]  # F sparse features, in batch key order
    table_sizes: tuple[int, ...]  # F row counts N_f
    n_dense: int  # dense inputs (0 allowed: the dense vector is then a learned constant)
    embedding_dim: int  # D
    bottom_mlp: tuple[int, ...]  # layer widths after the input; the last must equal D
    top_mlp: tuple[int, ...]  # layer widths after the interaction; the last must be 1

    def __post_init__(self) -> None:
        if not self.feature_names:
            raise ValueError("feature_names: a DLRM needs at least one sparse feature")
        if len(set(self.feature_names)) != len(self.feature_names):
            raise ValueError(f"feature_names must be unique, got {list(self.feature_names)}")
        if len(self.table_sizes) != len(self.feature_names):
            raise ValueError(
                f"table_sizes: need one size per feature ({len(self.feature_names)}), "
                f"got {len(self.table_sizes)}"
            )
        for name, size in zip(self.feature_names, self.table_sizes, strict=True):
            if not 1 <= size <= 2**40:
                raise ValueError(f"table_sizes[{name!r}] must be in [1, 2**40], got {size}")
        if not 0 <= self.n_dense <= 100_000:
            raise ValueError(f"n_dense must be in [0, 100000], got {self.n_dense}")
        if not 1 <= self.embedding_dim <= 4096:
            raise ValueError(f"embedding_dim must be in [1, 4096], got {self.embedding_dim}")
        for field, widths in (("bottom_mlp", self.bottom_mlp), ("top_mlp", self.top_mlp)):
            if not widths or any(not 1 <= w <= 65_536 for w in widths):
                raise ValueError(f"{field} needs >= 1 layer widths in [1, 65536], got {widths}")
        if self.bottom_mlp[-1] != self.embedding_dim:
            raise ValueError(
                f"bottom_mlp must end at embedding_dim={self.embedding_dim}, "
                f"got {self.bottom_mlp[-1]}"
            )
        if self.top_mlp[-1] != 1:
            raise ValueError(f"top_mlp must end at 1 (the logit), got {self.top_mlp[-1]}")

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def interaction_dim(self) -> int:
        """Width of the InteractionArch output: D + (F + 1) * F / 2."""
        f = self.num_features
        return self.embedding_dim + (f + 1) * f // 2

    @classmethod
    def criteo_reference(
        cls, table_sizes: Sequence[int], feature_names: Sequence[str] | None = None
    ) -> DLRMConfig:
        """The facebookresearch/dlrm Criteo-Kaggle shape: D=16, bottom 13-512-256-64-16,
        top 512-256-1, over the given table sizes (26 for Criteo; names default C1..CF)."""
        names = feature_names or [f"C{i + 1}" for i in range(len(table_sizes))]
        return cls(
            feature_names=tuple(names),
            table_sizes=tuple(int(n) for n in table_sizes),
            n_dense=CRITEO_N_DENSE,
            embedding_dim=CRITEO_EMBEDDING_DIM,
            bottom_mlp=CRITEO_BOTTOM_MLP,
            top_mlp=CRITEO_TOP_MLP,
        )

    @classmethod
    def from_schema(
        cls,
        schema: StreamSchema,
        embedding_dim: int = 16,
        bottom_hidden: Sequence[int] = (64,),
        top_hidden: Sequence[int] = (64, 32),
    ) -> DLRMConfig:
        """A DLRM for a stream's schema; the bottom MLP ends at D and the top MLP at 1."""
        return cls(
            feature_names=schema.keys,
            table_sizes=schema.table_sizes,
            n_dense=schema.n_dense,
            embedding_dim=embedding_dim,
            bottom_mlp=(*bottom_hidden, embedding_dim),
            top_mlp=(*top_hidden, 1),
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DLRMConfig:
        expected = set(cls.__dataclass_fields__)
        if set(data) != expected:
            raise ValueError(f"DLRMConfig needs exactly the fields {sorted(expected)}")
        return cls(
            feature_names=tuple(str(n) for n in data["feature_names"]),
            table_sizes=tuple(int(n) for n in data["table_sizes"]),
            n_dense=int(data["n_dense"]),
            embedding_dim=int(data["embedding_dim"]),
            bottom_mlp=tuple(int(w) for w in data["bottom_mlp"]),
            top_mlp=tuple(int(w) for w in data["top_mlp"]),
        )


def _mlp(in_features: int, widths: Sequence[int], final_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        with warnings.catch_warnings():
            # n_dense=0 gives a (width, 0) weight: the layer is just its bias, by design.
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            linear = nn.Linear(in_features, width)
        # facebookresearch/dlrm init: N(0, sqrt(2 / (fan_in + fan_out))), bias N(0, sqrt(1/out)).
        nn.init.normal_(linear.weight, 0.0, math.sqrt(2.0 / (in_features + width)))
        nn.init.normal_(linear.bias, 0.0, math.sqrt(1.0 / width))
        layers.append(linear)
        if final_relu or i < len(widths) - 1:
            layers.append(nn.ReLU())
        in_features = width
    return nn.Sequential(*layers)


class DenseArch(nn.Module):
    """Bottom MLP: (B, n_dense) -> (B, D), ReLU after every layer."""

    def __init__(self, n_dense: int, widths: Sequence[int]) -> None:
        super().__init__()
        self.mlp = _mlp(n_dense, widths, final_relu=True)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.mlp(dense)

    def layer_parameters(self) -> list[nn.Parameter]:
        """``parameters()`` as a flat walk of its layers: ~5x cheaper (4 against 22 us), and a
        trainer checks them on every step (LiveTrainer._bottom_token)."""
        return [p for layer in self.mlp for p in layer._parameters.values() if p is not None]


class SparseArch(nn.Module):
    """One EmbeddingBag (mode sum, sparse gradients) per feature: ids -> (B, F, D).

    ``tables[f]`` is any module called as ``table(values, offsets) -> (B, D)``, so a
    LiveEmbedding can wrap and replace a plain EmbeddingBag in place; ``base_only`` looks up
    the ``base`` of such wrappers instead.
    """

    def __init__(self, feature_names: Sequence[str], table_sizes: Sequence[int], dim: int):
        super().__init__()
        self.feature_names = tuple(feature_names)
        self.tables = nn.ModuleList()
        for n in table_sizes:
            bag = nn.EmbeddingBag(n, dim, mode="sum", sparse=True)
            # torchrec's default: U(-sqrt(1/N), sqrt(1/N)).
            nn.init.uniform_(bag.weight, -math.sqrt(1.0 / n), math.sqrt(1.0 / n))
            self.tables.append(bag)
        self._layouts: dict[bool, _BagLayout] = {}  # by base_only, see _layout

    def table(self, name: str) -> nn.Module:
        return self.tables[self.feature_names.index(name)]

    def set_table(self, name: str, module: nn.Module) -> None:
        self.tables[self.feature_names.index(name)] = module

    def forward(self, batch: SparseBatch, base_only: bool = False) -> torch.Tensor:
        if batch.keys != self.feature_names:
            raise ValueError(
                f"batch keys {list(batch.keys)} differ from the model's {list(self.feature_names)}"
            )
        layout = self._layout(base_only)
        if layout.weights and (
            not torch.is_grad_enabled() or not any(w.requires_grad for w in layout.weights)
        ):
            return self._pool(layout, batch)
        return torch.stack(
            [t(v, o) for t, v, o in zip(layout.tables, batch.values, batch.offsets, strict=True)],
            dim=1,
        )

    def _layout(self, base_only: bool) -> _BagLayout:
        """The tables a forward calls, and what the serving kernel needs of them: kept from call
        to call (building it took ~30 of a ~60 us MovieLens pooling) and rebuilt when a table,
        a weight or its storage is no longer the one it was built from."""
        mods = cast("list[nn.Module]", list(self.tables._modules.values()))
        # a LiveEmbedding's base is a submodule: looked up where getattr would find it
        tables = tuple(_base(m) for m in mods) if base_only else tuple(mods)
        layout = self._layouts.get(base_only)
        if layout is None or layout.tables != tables or not layout.current():
            layout = self._layouts[base_only] = _BagLayout.of(tables)
        return layout

    def _pool(self, layout: _BagLayout, batch: SparseBatch) -> torch.Tensor:
        """Inference, or frozen tables (a LiveTrainer's base): every table's bags summed by one
        call into the serving kernel, where 26 EmbeddingBag calls on a request of a few rows
        cost ~14 us each of bookkeeping."""
        specs = tuple(
            (ptr, rows, v.data_ptr(), v.numel(), o.data_ptr())
            for ptr, rows, v, o in zip(
                layout.ptrs, layout.rows, batch.values, batch.offsets, strict=True
            )
        )
        out = torch.empty(batch.batch_size, len(specs), layout.dim)
        bad = serving_kernel.pool_bags(specs, batch.batch_size, layout.dim, out.data_ptr())
        if bad >= 0:
            raise IndexError(f"ids of {self.feature_names[bad]!r} must be in [0, {specs[bad][1]})")
        return out


def _base(table: nn.Module) -> nn.Module:
    base = table._modules.get("base")
    return table if base is None else base


@dataclass(frozen=True)
class _BagLayout:
    """The table modules a SparseArch forward calls; ``weights`` (their bags' weights, with
    data pointers ``ptrs``, ``rows`` rows and width ``dim``) when every one is a plain sum
    EmbeddingBag of contiguous float32 rows, all of one width (the serving kernel pools them),
    else empty."""

    tables: tuple[nn.Module, ...]
    weights: tuple[torch.Tensor, ...] = ()
    ptrs: tuple[int, ...] = ()
    rows: tuple[int, ...] = ()
    dim: int = 0

    @staticmethod
    def of(tables: tuple[nn.Module, ...]) -> _BagLayout:
        weights = []
        for table in tables:
            if not (
                type(table) is nn.EmbeddingBag
                and table.mode == "sum"
                and table.padding_idx is None
                and table.max_norm is None
            ):
                return _BagLayout(tables)
            weights.append(table.weight)
        dims = {w.shape[1] for w in weights}
        plain = all(w.dtype == torch.float32 and w.is_contiguous() for w in weights)
        if len(dims) != 1 or not plain:
            return _BagLayout(tables)
        return _BagLayout(
            tables,
            tuple(weights),
            tuple(w.data_ptr() for w in weights),
            tuple(w.shape[0] for w in weights),
            dims.pop(),
        )

    def current(self) -> bool:
        """Whether each table still holds the weight it had, over the same storage and rows
        (a ``weight.data = ...`` or a resize keeps the tensor but not its memory)."""
        return not self.weights or all(
            t._parameters["weight"] is w and w.data_ptr() == p and w.shape[0] == n
            for t, w, p, n in zip(self.tables, self.weights, self.ptrs, self.rows, strict=True)
        )


class InteractionArch(nn.Module):
    """Pairwise dot products of [dense, sparse_1..sparse_F], strictly upper triangle.

    (B, D), (B, F, D) -> (B, D + (F + 1) * F / 2): the dense vector followed by the dots
    (dlrm_core.interaction: a C kernel in float32 on the CPU).
    """

    pairs: torch.Tensor

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("pairs", pair_index(num_features), persistent=False)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return dot_interaction(dense, sparse, self.pairs)


class OverArch(nn.Module):
    """Top MLP: (B, D + P) -> (B,) logits (no activation on the last layer)."""

    def __init__(self, in_features: int, widths: Sequence[int]) -> None:
        super().__init__()
        self.mlp = _mlp(in_features, widths, final_relu=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features).squeeze(1)


class DLRM(nn.Module):
    """SparseBatch -> (B,) click logits; apply a sigmoid for probabilities.

    ``delta`` adds a low-rank correction to the pooled embeddings of the base tables (wrapped
    tables then serve their base only): a published version on the inference side, the
    trainer's fused groups on the node.
    """

    def __init__(self, config: DLRMConfig) -> None:
        super().__init__()
        self.config = config
        self.dense_arch = DenseArch(config.n_dense, config.bottom_mlp)
        self.sparse_arch = SparseArch(
            config.feature_names, config.table_sizes, config.embedding_dim
        )
        self.inter_arch = InteractionArch(config.num_features)
        self.over_arch = OverArch(config.interaction_dim, config.top_mlp)

    def forward(self, batch: SparseBatch, delta: PooledDelta | None = None) -> torch.Tensor:
        sparse = self.sparse_arch(batch, base_only=delta is not None)
        if delta is not None:
            delta.add_to_(sparse, batch)
        return self.logits(batch, sparse)

    def logits(
        self, batch: SparseBatch, sparse: torch.Tensor, bottom: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B,) logits of the batch's dense features and its pooled embeddings (B, F, D);
        ``bottom`` (B, D), when given, is the bottom MLP's output of them, computed before."""
        if bottom is None:
            bottom = self.bottom(batch)
        return self.over_arch(self.inter_arch(bottom, sparse))

    def bottom(self, batch: SparseBatch) -> torch.Tensor:
        """(B, D) the bottom MLP's output of the batch's dense features."""
        if batch.dense.shape[1] != self.config.n_dense:
            raise ValueError(
                f"batch has {batch.dense.shape[1]} dense features, model expects "
                f"{self.config.n_dense}"
            )
        return self.dense_arch(batch.dense)

    def dense_parameters(self) -> list[nn.Parameter]:
        """Parameters of the MLPs (dense gradients)."""
        return [*self.dense_arch.parameters(), *self.over_arch.parameters()]

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Parameters of the embedding tables (sparse gradients)."""
        return list(self.sparse_arch.parameters())


def table_bag(table: nn.Module, name: str = "") -> nn.EmbeddingBag:
    """The base EmbeddingBag of a table module, whether or not a correction wraps it (a
    LiveEmbedding keeps its frozen base as ``.base``)."""
    bag = getattr(table, "base", table)
    if not isinstance(bag, nn.EmbeddingBag):
        raise TypeError(f"table {name!r} is a {type(table).__name__}")
    return bag


def base_bag(model: DLRM, name: str) -> nn.EmbeddingBag:
    """The base EmbeddingBag of table ``name`` (table_bag)."""
    return table_bag(model.sparse_arch.table(name), name)


def base_weight(model: DLRM, name: str) -> torch.Tensor:
    """(N, D) the base rows of table ``name``, whether or not it is wrapped."""
    return base_bag(model, name).weight
