"""Stream readers: each yields time-ordered ``SparseBatch`` es and exposes its ``StreamSchema``.

One module per format (criteo, avazu, movielens, generic_csv) over a shared ``base``; the
feature schema of each format is documented in its module and in docs/DATA.md.
"""

from dlrm_core.readers.avazu import AvazuReader
from dlrm_core.readers.base import (
    BadLine,
    MalformedLineError,
    ReadOptions,
    ReadStats,
    StreamReader,
)
from dlrm_core.readers.criteo import CriteoReader
from dlrm_core.readers.generic_csv import CsvReader
from dlrm_core.readers.hashing import MISSING_ROW, hash_ids
from dlrm_core.readers.movielens import MovieLensReader

__all__ = [
    "MISSING_ROW",
    "AvazuReader",
    "BadLine",
    "CriteoReader",
    "CsvReader",
    "MalformedLineError",
    "MovieLensReader",
    "ReadOptions",
    "ReadStats",
    "StreamReader",
    "hash_ids",
]
