"""Everything a running lockerd instance consists of, handed to the HTTP layer and the CLI."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio

from actors.fleet import FleetView
from actors.registry import BankRegistry
from lockerd.config import Settings
from lockerd.directory import Directory
from lockerd.metrics import Metrics
from lockerd.security import Keyring
from store.base import EventStore


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class ServiceContext:
    settings: Settings
    store: EventStore
    keyring: Keyring
    directory: Directory
    fleet: FleetView
    registry: BankRegistry
    metrics: Metrics
    mqtt_connected: Callable[[], bool]
    clock: Callable[[], datetime] = utc_now
    shutdown: trio.Event = field(default_factory=trio.Event)
    # capabilities added by later modules (users, metrics ingestion, ...) register here
    extensions: dict[str, Any] = field(default_factory=dict)
