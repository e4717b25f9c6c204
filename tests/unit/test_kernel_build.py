import os
import subprocess
import sys
from pathlib import Path

import pytest

import dlrm_core.kernel


@pytest.mark.parametrize("kernel", ["_serving_kernel", "_training_kernel"])
def test_a_build_older_than_its_source_is_refused(tmp_path, kernel):
    """A copy of the package whose kernel source is newer than its build does not import."""
    package = Path(dlrm_core.kernel.__file__).parent
    copy = tmp_path / "dlrm_core"
    copy.mkdir()
    for f in package.iterdir():
        if f.suffix in (".py", ".so", ".c"):
            (copy / f.name).write_bytes(f.read_bytes())
    built = next(copy.glob(f"{kernel}*.so"))
    os.utime(built, (1_000_000_000, 1_000_000_000))
    run = [sys.executable, "-c", "import dlrm_core.kernel"]
    stale = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True)
    assert (
        stale.returncode != 0
        and f"{kernel}." in stale.stderr
        and "is older than" in stale.stderr
        and "make install" in stale.stderr
    )
    os.utime(built)  # built now: newer than the source
    assert subprocess.run(run, cwd=tmp_path, capture_output=True, text=True).returncode == 0
