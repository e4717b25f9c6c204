"""Stream readers: each yields time-ordered ``SparseBatch`` es and exposes its ``StreamSchema``.

One module per format (criteo, avazu, movielens, generic_csv) over a shared ``base``; the
feature schema of each format is documented in its module and in docs/DATA.md;
``open_reader`` (formats) opens a file by format name.
"""

from dlrm_core.readers.avazu import AvazuReader
from dlrm_core.readers.base import (
    BadLine,
    LineError,
    MalformedLineError,
    ReadOptions,
    ReadStats,
    StreamReader,
)
from dlrm_core.readers.criteo import CriteoReader
from dlrm_core.readers.formats import READER_FORMATS, CsvLayout, open_reader
from dlrm_core.readers.generic_csv import CsvReader
from dlrm_core.readers.hashing import MISSING_ROW, hash_ids
from dlrm_core.readers.movielens import MovieLensReader

__all__ = [
    "MISSING_ROW",
    "READER_FORMATS",
    "AvazuReader",
    "BadLine",
    "CriteoReader",
    "CsvLayout",
    "CsvReader",
    "LineError",
    "MalformedLineError",
    "MovieLensReader",
    "ReadOptions",
    "ReadStats",
    "StreamReader",
    "hash_ids",
    "open_reader",
]
