"""The C kernels: dlrm_core/_serving_kernel.c (the serving path) and _training_kernel.c (the
trainers' fused steps), C extensions that the install builds.

Imported from here only, so that a build older than its source is refused: an editable checkout
whose C changed since the last `make install` would otherwise run the old code against the new
Python side (another index layout: wrong rows, or worse). An installed package ships no source
and is not checked.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from dlrm_core import _serving_kernel as serving_kernel
from dlrm_core import _training_kernel as training_kernel


def check_fresh(module: ModuleType, source: Path) -> None:
    """Raise ImportError when ``source`` exists and is newer than the built ``module``."""
    built = Path(module.__file__ or "")
    if source.exists() and source.stat().st_mtime > built.stat().st_mtime:
        raise ImportError(f"{built} is older than {source}: rebuild it (`make install`)")


for _module in (serving_kernel, training_kernel):
    check_fresh(_module, Path(__file__).with_name(_module.__name__.rsplit(".", 1)[1] + ".c"))

__all__ = ["serving_kernel", "training_kernel"]
