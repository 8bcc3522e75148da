"""The broker of the deployment (contract §6): Mosquitto configured as docker/mosquitto/
configures it, with the go-auth-faithful plugin and go-auth's cache on (30 s).

A test module that needs another set-up defines its own ``broker`` fixture, which wins.
"""

from __future__ import annotations

import pytest

from tests.broker._stack import Broker, start_broker
from tests.support.fixtures import ComposeBrokerFactory, GoAuthBrokerFactory


@pytest.fixture
def broker(
    compose_broker_factory: ComposeBrokerFactory, goauth_broker_factory: GoAuthBrokerFactory
) -> Broker:
    return start_broker(
        "compose",
        compose_broker_factory=compose_broker_factory,
        goauth_broker_factory=goauth_broker_factory,
        cache_seconds=30,
    )
