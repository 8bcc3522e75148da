"""The console's browser tests share one lockerd + Mosquitto + device and one Chromium per
session (see harness.py); the audit test runs after every other console test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from tests.lockerd.console.harness import (
    OPERATOR_EMAIL,
    OPERATOR_PASSWORD,
    Backend,
    Console,
    World,
    chromium,
)

AUDIT_MODULE = "test_console_audit.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The audit test checks the actions of all the others: it goes last."""
    items.sort(key=lambda item: item.path.name == AUDIT_MODULE)


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    running = Backend(tmp_path_factory.mktemp("console-backend"))
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(scope="session")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    with chromium(tmp_path_factory.mktemp("chromium") / "profile") as browser:
        yield browser


@pytest.fixture(scope="session")
def world(backend: Backend, driver: WebDriver) -> World:
    operator_id = backend.create_user(
        OPERATOR_EMAIL, OPERATOR_PASSWORD, role="admin", name="Olga Operator"
    )
    bank = backend.create_bank(
        "Central Station", 3, location="Hall B", heartbeat_interval_seconds=2
    )
    offline = backend.create_bank("Harbour", 2, location="Pier 4")
    backend.start_device(bank["id"])
    console = Console(driver, backend.base_url)
    console.load()
    console.sign_in_with_password(OPERATOR_EMAIL, OPERATOR_PASSWORD)
    console.signed_in()
    console.live()
    return World(backend, console, operator_id, bank, offline)
