"""Pytest fixtures shared by the test suite (loaded from tests/conftest.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.support.goauth_broker import (
    GoAuthBroker,
    GoAuthConfig,
    GoAuthPluginBuildError,
    render_compose_config,
    start_compose_broker,
)
from tests.support.mosquitto import MosquittoBroker, MosquittoNotInstalled

BrokerFactory = Callable[..., MosquittoBroker]


class GoAuthBrokerFactory(Protocol):
    def __call__(
        self,
        config: GoAuthConfig | None = None,
        *,
        extra_config: Sequence[str] = (),
        **config_fields: Any,
    ) -> GoAuthBroker: ...


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


@pytest.fixture
def goauth_broker_factory(tmp_path: Path) -> Iterator[GoAuthBrokerFactory]:
    """Start Mosquitto brokers whose only authority is the go-auth stand-in plugin.

    ``goauth_broker_factory(http_port=backend_port, secret="s", cache=True, ...)``: keyword
    arguments are GoAuthConfig fields (or pass a GoAuthConfig first and override fields);
    ``extra_config`` lines are appended to mosquitto.conf (e.g. ``"log_type all"``). The plugin
    is compiled once per session; a missing compiler, header or mosquitto fails the test (it is
    never skipped). Every broker is started before it is returned and stopped at teardown.
    """
    brokers: list[GoAuthBroker] = []

    def make(
        config: GoAuthConfig | None = None,
        *,
        extra_config: Sequence[str] = (),
        **config_fields: Any,
    ) -> GoAuthBroker:
        chosen = dataclasses.replace(config or GoAuthConfig(), **config_fields)
        try:
            broker = GoAuthBroker(
                tmp_path / f"goauth-broker-{len(brokers)}", chosen, extra_config=extra_config
            )
        except (MosquittoNotInstalled, GoAuthPluginBuildError) as exc:
            pytest.fail(str(exc), pytrace=False)
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in reversed(brokers):
        broker.close()


class ComposeBrokerFactory(Protocol):
    def __call__(
        self,
        *,
        http_port: int,
        secret: str,
        backend_user: str,
        backend_password: str,
        cache_seconds: int,
        http_host: str = "127.0.0.1",
    ) -> GoAuthBroker: ...


@pytest.fixture
def compose_broker_factory(tmp_path: Path) -> Iterator[ComposeBrokerFactory]:
    """Start brokers configured exactly as docker-compose.yml configures Mosquitto + go-auth:
    docker/mosquitto/entrypoint.sh renders the template (and go-auth's files backend for the
    backend user), our go-auth plugin takes go-auth's options, Mosquitto keeps the deployment's
    queue limits; only the listener, the persistence directory and go-auth's backend address
    (``http_host:http_port`` instead of ``lockerd:8080``) are the test's. ``broker.compose``
    is the rendered configuration."""
    brokers: list[GoAuthBroker] = []

    def make(
        *,
        http_port: int,
        secret: str,
        backend_user: str,
        backend_password: str,
        cache_seconds: int,
        http_host: str = "127.0.0.1",
    ) -> GoAuthBroker:
        workdir = tmp_path / f"compose-broker-{len(brokers)}"
        try:
            compose = render_compose_config(
                workdir / "compose",
                secret=secret,
                backend_user=backend_user,
                backend_password=backend_password,
                cache_seconds=cache_seconds,
                http_host=http_host,
                http_port=http_port,
            )
            broker = start_compose_broker(workdir, compose)
        except (MosquittoNotInstalled, GoAuthPluginBuildError) as exc:
            pytest.fail(str(exc), pytrace=False)
        brokers.append(broker)
        return broker

    yield make
    for broker in reversed(brokers):
        broker.close()
