"""Shared fixtures. Tests that need a service, the shared data or the browser skip with a reason
on a developer's machine, and fail under CI (CI=true), where all of them must be present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import services

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("LIVEUPDATE_SHARED_DATA", ROOT.parent / "shared" / "data"))
ARTIFACTS = ROOT / "test-artifacts"


def require(available: bool, what: str) -> None:
    if available:
        return
    if services.IN_CI:
        pytest.fail(f"{what} is required under CI but is missing")
    pytest.skip(f"{what} is not available on this machine")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    require(services.postgres_up(), f"PostgreSQL at {services.POSTGRES_ADMIN_URL}")
    return services.POSTGRES_ADMIN_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    require(services.redis_up(), f"Redis at {services.REDIS_URL}")
    return services.REDIS_URL


@pytest.fixture(scope="session")
def shared_data() -> Path:
    require((SHARED_DATA / "README.md").exists(), f"the shared datasets in {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def chromium_path() -> str:
    require(Path(services.CHROMIUM).exists(), f"Chromium at {services.CHROMIUM}")
    return services.CHROMIUM


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread (restored afterwards)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def fresh_postgres_db(postgres_url):
    """A PostgreSQL database of its own, dropped afterwards: yields its URL."""
    with services.temporary_postgres_database(postgres_url) as url:
        yield url
