"""The serving kernel, dlrm_core/_serving_kernel.c: a C extension that the install builds.

Imported from here only, so that a build older than its source is refused: an editable checkout
whose C changed since the last `make install` would otherwise run the old code against the new
Python side (another index layout: wrong rows, or worse). An installed package ships no source
and is not checked.
"""

from __future__ import annotations

from pathlib import Path

from dlrm_core import _serving_kernel as serving_kernel

_SOURCE = Path(__file__).with_name("_serving_kernel.c")
_BUILT = Path(serving_kernel.__file__ or "")

if _SOURCE.exists() and _SOURCE.stat().st_mtime > _BUILT.stat().st_mtime:
    raise ImportError(f"{_BUILT} is older than {_SOURCE}: rebuild it (`make install`)")

__all__ = ["serving_kernel"]
