"""Pytest fixtures shared by the test suite (loaded from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mosquitto import MosquittoBroker, MosquittoNotInstalled

BrokerFactory = Callable[..., MosquittoBroker]


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    """Start extra brokers with custom options: ``mosquitto_factory(allow_anonymous=False, ...)``.

    Keyword arguments go to MosquittoBroker. Every broker is started before it is returned
    and stopped at teardown. A missing mosquitto fails the test: it is never skipped.
    """
    brokers: list[MosquittoBroker] = []

    def make(**options: Any) -> MosquittoBroker:
        try:
            broker = MosquittoBroker(tmp_path / f"mosquitto-{len(brokers)}", **options)
        except MosquittoNotInstalled as exc:
            pytest.fail(str(exc), pytrace=False)
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in reversed(brokers):
        broker.close()


@pytest.fixture
def mosquitto(mosquitto_factory: BrokerFactory) -> MosquittoBroker:
    """A started private mosquitto on a free loopback port, stopped after the test."""
    return mosquitto_factory()
