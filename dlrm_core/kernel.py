"""The C kernels: dlrm_core/_serving_kernel.c (the serving path), _training_kernel.c (the
trainers' fused steps), _admission_kernel.c (the LiveTrainer's admission pass) and
_interaction_kernel.c (the model's pairwise dot interaction), C extensions that the install
builds; the serving and admission kernels share the cuckoo index's code, _cuckoo_index.h.

Imported from here only, so that a build older than its source is refused: an editable checkout
whose C changed since the last `make install` would otherwise run the old code against the new
Python side (another index layout: wrong rows, or worse). An installed package ships no source
and is not checked.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch

from dlrm_core import _admission_kernel as admission_kernel
from dlrm_core import _interaction_kernel as interaction_kernel
from dlrm_core import _serving_kernel as serving_kernel
from dlrm_core import _training_kernel as training_kernel

_HERE = Path(__file__).parent
# each kernel's sources besides its own .c
_HEADERS: dict[ModuleType, tuple[str, ...]] = {
    serving_kernel: ("_cuckoo_index.h",),
    training_kernel: (),
    admission_kernel: ("_cuckoo_index.h",),
    interaction_kernel: (),
}


def check_fresh(module: ModuleType, source: Path) -> None:
    """Raise ImportError when ``source`` exists and is newer than the built ``module``."""
    built = Path(module.__file__ or "")
    if source.exists() and source.stat().st_mtime > built.stat().st_mtime:
        raise ImportError(f"{built} is older than {source}: rebuild it (`make install`)")


for _module, _headers in _HEADERS.items():
    for _source in (_module.__name__.rsplit(".", 1)[1] + ".c", *_headers):
        check_fresh(_module, _HERE / _source)


def all_finite(x: torch.Tensor) -> bool:
    """bool(torch.isfinite(x).all()), in one call into the training kernel for contiguous
    float32 on the CPU (a trainer checks every batch's dense features and labels: the torch
    ops cost ~25 us a tensor, the call ~1 us)."""
    if x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous():
        return bool(training_kernel.all_finite(x.data_ptr(), x.numel()))
    return bool(torch.isfinite(x).all())


__all__ = [
    "all_finite",
    "admission_kernel",
    "interaction_kernel",
    "serving_kernel",
    "training_kernel",
]
