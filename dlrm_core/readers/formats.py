"""Opening a stream file by format name: the one place that maps a format to its reader."""

from __future__ import annotations

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
    """The reader of ``fmt`` over ``path``. What is wrong is named before any line is read:
    ValueError (an unknown format, a csv without its layout, a bad option), FileNotFoundError,
    IsADirectoryError, PermissionError (the path; see base.check_file)."""
    if fmt not in READER_FORMATS:
        raise ValueError(f"format must be one of {', '.join(READER_FORMATS)}, got {fmt!r}")
    path = Path(path)
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
