"""Fixtures of the integration tests (the control plane's live in cp_support)."""

from tests.integration.cp_support import clients, sent_tasks  # noqa: F401
