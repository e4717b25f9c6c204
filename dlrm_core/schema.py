"""What a stream looks like to the model: its sparse features (one table each) and dense columns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SparseFeatureSpec:
    name: str
    num_rows: int  # table size; raw values are hashed into [0, num_rows)

    def __post_init__(self) -> None:
        if self.num_rows < 1:
            raise ValueError(f"feature {self.name!r} needs num_rows >= 1, got {self.num_rows}")


@dataclass(frozen=True)
class StreamSchema:
    sparse: tuple[SparseFeatureSpec, ...]
    dense: tuple[str, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.sparse]
        if len(set(names)) != len(names):
            raise ValueError(f"sparse feature names must be unique, got {names}")

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.sparse)

    @property
    def table_sizes(self) -> tuple[int, ...]:
        return tuple(f.num_rows for f in self.sparse)

    @property
    def n_dense(self) -> int:
        return len(self.dense)
