"""Secrets the control plane hands out: node and API tokens, and what is stored of them."""

from __future__ import annotations

import hashlib
import secrets


def new_token() -> str:
    """256 random bits, URL-safe, never starting with "-" (a command line would read such a
    token as an option)."""
    while True:
        raw = secrets.token_urlsafe(32)
        if not raw.startswith("-"):
            return raw


def hash_api_token(raw: str) -> str:
    """What is stored of an API token (DRF's Token.key, 40 characters): its SHA-256, so the
    database and the admin never hold one that works."""
    return hashlib.sha256(b"api-token:" + raw.encode()).hexdigest()[:40]


def hash_token(raw: str) -> str:
    """Node tokens are 256 random bits, so one SHA-256 is enough (no password stretching)."""
    return hashlib.sha256(raw.encode()).hexdigest()
