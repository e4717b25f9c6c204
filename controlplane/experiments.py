"""The results.json of ``liveupdate experiment``, as the control plane checks an import.

The contract is defined once, as dataclasses, in nodeworker.protocol.experiment_results (pure
Python, no torch): the experiment checks what it writes with the same function.
"""

from __future__ import annotations

from nodeworker.protocol.experiment_results import validate_results

__all__ = ["validate_results"]
