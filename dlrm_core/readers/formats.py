"""Opening a stream file by format name: the one place that maps a format to its reader."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from dlrm_core.readers.avazu import AvazuReader
from dlrm_core.readers.base import ReadOptions, StreamReader
from dlrm_core.readers.criteo import CriteoReader
from dlrm_core.readers.generic_csv import CsvReader
from dlrm_core.readers.movielens import MovieLensReader

READER_FORMATS = ("criteo", "avazu", "movielens", "csv")
DEFAULT_MAX_ROWS = {"criteo": 1 << 18, "avazu": 1 << 18, "movielens": 1 << 16, "csv": 1 << 18}


@dataclass(frozen=True)
class CsvLayout:
    """Which columns of a click log play which role, and how to read them (see CsvReader)."""

    label: str
    categorical: tuple[str, ...]
    dense: tuple[str, ...] = ()
    time: str | None = None
    time_format: str | None = None
    label_threshold: float | None = None
    multi_hot: tuple[tuple[str, str], ...] = field(default=())  # (column, separator)
    dense_log1p: bool = False
    delimiter: str | None = None  # None: sniffed from the first line
    columns: tuple[str, ...] | None = None  # a file without a header: its column names
    sort_by_time: bool = False


def open_reader(
    fmt: str,
    path: str | Path,
    options: ReadOptions | None = None,
    max_rows: int | None = None,
    csv: CsvLayout | None = None,
) -> StreamReader:
    """The reader of ``fmt`` over ``path``; ValueError / FileNotFoundError / PermissionError
    name what is wrong (an unknown format, a missing or unreadable file, a folder given for a
    one-file format, a csv without its layout) before any line is read."""
    if fmt not in READER_FORMATS:
        raise ValueError(f"format must be one of {', '.join(READER_FORMATS)}, got {fmt!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_dir() and fmt != "movielens":
        raise ValueError(f"{path} is a folder; format {fmt} reads one file")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"cannot read {path}: permission denied")
    rows = max_rows or DEFAULT_MAX_ROWS[fmt]
    if fmt == "criteo":
        return CriteoReader(path, options, max_rows=rows)
    if fmt == "avazu":
        return AvazuReader(path, options, max_rows=rows)
    if fmt == "movielens":
        return MovieLensReader(path, options, max_rows=rows)
    if csv is None:
        raise ValueError("format csv needs its layout: at least the label and categorical columns")
    return CsvReader(
        path, label=csv.label, categorical=csv.categorical, dense=csv.dense, time=csv.time,
        options=options, time_format=csv.time_format, label_threshold=csv.label_threshold,
        multi_hot=dict(csv.multi_hot), dense_log1p=csv.dense_log1p, delimiter=csv.delimiter,
        columns=csv.columns, num_rows=rows, sort_by_time=csv.sort_by_time,
    )  # fmt: skip
