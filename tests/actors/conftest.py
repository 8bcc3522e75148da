"""Fixtures shared by the actor tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog.testing


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    """Keep structlog's output (tracebacks of the crashes these tests cause) out of the way."""
    with structlog.testing.capture_logs():
        yield
