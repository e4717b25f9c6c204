import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dlrm_core.kernel

IMPORT = [sys.executable, "-c", "import dlrm_core.kernel"]


def package_copy(tmp_path: Path) -> Path:
    """A copy of the package's Python, kernel sources and builds, their times kept."""
    package = Path(dlrm_core.kernel.__file__).parent
    copy = tmp_path / "dlrm_core"
    copy.mkdir()
    for f in package.iterdir():
        if f.suffix in (".py", ".so", ".c", ".h"):
            shutil.copy2(f, copy / f.name)
    return copy


@pytest.mark.parametrize(
    "kernel", ["_serving_kernel", "_training_kernel", "_admission_kernel", "_interaction_kernel"]
)
def test_a_build_older_than_its_source_is_refused(tmp_path, kernel):
    """A copy of the package whose kernel source is newer than its build does not import."""
    built = next(package_copy(tmp_path).glob(f"{kernel}*.so"))
    os.utime(built, (1_000_000_000, 1_000_000_000))
    stale = subprocess.run(IMPORT, cwd=tmp_path, capture_output=True, text=True)
    assert (
        stale.returncode != 0
        and f"{kernel}." in stale.stderr
        and "is older than" in stale.stderr
        and "make install" in stale.stderr
    )
    os.utime(built)  # built now: newer than the source
    assert subprocess.run(IMPORT, cwd=tmp_path, capture_output=True, text=True).returncode == 0


@pytest.mark.parametrize("kernel", ["_serving_kernel", "_admission_kernel"])
def test_a_build_older_than_the_shared_index_header_is_refused(tmp_path, kernel):
    """Both kernels that compile the cuckoo index's header are refused when it is newer."""
    copy = package_copy(tmp_path)
    built = next(copy.glob(f"{kernel}*.so"))
    os.utime(copy / f"{kernel}.c", (999_999_999, 999_999_999))  # only the header is newer
    os.utime(built, (1_000_000_000, 1_000_000_000))
    stale = subprocess.run(IMPORT, cwd=tmp_path, capture_output=True, text=True)
    assert stale.returncode != 0 and "_cuckoo_index.h" in stale.stderr
