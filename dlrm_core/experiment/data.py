"""Opening an experiment's stream by format: a schema, a re-openable batch source, its size."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlrm_core.batch import SparseBatch
from dlrm_core.readers import (
    AvazuReader,
    CriteoReader,
    CsvReader,
    MovieLensReader,
    ReadOptions,
    StreamReader,
)
from dlrm_core.schema import StreamSchema
from dlrm_core.synthetic import SyntheticConfig, SyntheticStream

FORMATS = ("criteo", "avazu", "movielens", "csv", "synthetic")


@dataclass(frozen=True)
class StreamSource:
    schema: StreamSchema
    open: Callable[[], Iterable[SparseBatch]]
    num_events: int
    info: dict[str, Any]  # name, format, path, reader stats ... (goes into results.json)


def open_source(
    fmt: str,
    path: str | Path | None,
    batch_size: int,
    max_events: int | None = None,
    max_rows: int | None = None,
    csv_columns: dict[str, Any] | None = None,
    synthetic: SyntheticConfig | None = None,
) -> StreamSource:
    """The stream of ``fmt`` at ``path``; readers are counted by one pass first."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "synthetic":
        cfg = synthetic or SyntheticConfig(batch_size=batch_size)
        if max_events is not None:
            cfg = SyntheticConfig(**{**cfg.__dict__, "num_events": max_events})
        stream = SyntheticStream(cfg)
        info: dict[str, Any] = {
            "name": "synthetic",
            "format": fmt,
            "path": None,
            "synthetic": cfg.__dict__,
        }
        return StreamSource(stream.schema, lambda: iter(stream), cfg.num_events, info)
    if path is None:
        raise ValueError(f"--data is required for format {fmt!r}")
    options = ReadOptions(batch_size=batch_size, max_events=max_events)
    reader = _reader(fmt, Path(path), options, max_rows, csv_columns)
    num = sum(len(b) for b in reader)
    info = {
        "name": Path(path).name,
        "format": fmt,
        "path": str(path),
        "malformed_lines": reader.stats.malformed,
        "malformed_by_reason": dict(reader.stats.by_reason),
    }
    return StreamSource(reader.schema, lambda: iter(reader), num, info)


def _reader(
    fmt: str,
    path: Path,
    options: ReadOptions,
    max_rows: int | None,
    csv_columns: dict[str, Any] | None,
) -> StreamReader:
    if fmt == "criteo":
        return CriteoReader(path, options, max_rows=max_rows or 1 << 18)
    if fmt == "avazu":
        return AvazuReader(path, options, max_rows=max_rows or 1 << 18)
    if fmt == "movielens":
        return MovieLensReader(path, options, max_rows=max_rows or 1 << 16)
    if not csv_columns or "label" not in csv_columns or not csv_columns.get("categorical"):
        raise ValueError("format 'csv' needs --label and --categorical columns")
    kwargs = dict(csv_columns)
    if max_rows is not None:
        kwargs["num_rows"] = max_rows
    return CsvReader(path, options=options, **kwargs)
