"""The embedded default's Celery broker: the filesystem transport in a data folder that the
control plane and a node on the same machine share (with REDIS_URL there is none of this). One
layout for both sides, so a task the plane writes is in the folder the node reads. Stdlib only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

URL = "filesystem://"
FOLDERS = ("broker", "broker-processed", "broker-control", "celery-results")


def make_folders(data: Path) -> None:
    for folder in FOLDERS:
        (data / folder).mkdir(parents=True, exist_ok=True)


def result_backend(data: Path) -> str:
    return f"file://{data / 'celery-results'}"


def transport_options(data: Path) -> dict[str, Any]:
    return {
        "data_folder_in": str(data / "broker"),
        "data_folder_out": str(data / "broker"),
        "processed_folder": str(data / "broker-processed"),
        "control_folder": str(data / "broker-control"),  # default: ./control in the cwd
        "store_processed": False,
    }
