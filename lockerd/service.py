"""``lockerd serve``: the whole service in one Trio process.

Ownership, outermost first: the store (its one thread), then the MQTT connection, then one
nursery holding a root supervisor for the service's critical actors (gateway, dispatcher,
timers, last-seen flusher, HTTP server) and the bank registry's supervisor for bank actors.
A critical actor that exceeds its restart budget escalates: the service stops with an error
rather than limp on without, say, its broker connection. Cancelling the top scope (SIGTERM,
Ctrl-C) unwinds everything in order; the gateway publishes ``offline`` on its way out.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import structlog
import trio
from hypercorn.trio import serve as hypercorn_serve
from quart import Blueprint

from actors.bank import BankServices
from actors.dispatcher import Dispatcher
from actors.fleet import FleetView
from actors.registry import BankRegistry
from actors.supervisor import RestartPolicy, Supervisor
from actors.timers import TimerService
from gateway import outbound, topics
from gateway.mqtt import MqttSettings, Will, open_mqtt_client
from gateway.router import Gateway
from lockerd.config import Settings
from lockerd.context import ServiceContext, utc_now
from lockerd.directory import Directory
from lockerd.domain import commands as c
from lockerd.features import installers
from lockerd.http.app import create_app
from lockerd.http.server import harden, hypercorn_config
from lockerd.metrics import Metrics
from lockerd.projections import PLAIN_TABLES_DDL, PROJECTIONS
from lockerd.security import load_keyring
from store import open_store
from store.base import EventStore, SqlTx

log = structlog.get_logger("lockerd.service")

LAST_SEEN_FLUSH_SECONDS = 5.0

async def prepare_schema(store: EventStore) -> None:
    def create(tx: SqlTx) -> None:
        for ddl in PLAIN_TABLES_DDL:
            tx.execute(ddl)

    await store.write(create)


async def flush_last_seen(store: EventStore, fleet: FleetView) -> None:
    """Persist ``last_seen`` coalesced: at most one write per bank per flush interval."""
    written: dict[str, datetime] = {}
    while True:
        await trio.sleep(LAST_SEEN_FLUSH_SECONDS)
        rows = [
            (bank_id, status.last_seen.isoformat())
            for bank_id, status in fleet.banks.items()
            if status.last_seen is not None and written.get(bank_id) != status.last_seen
        ]
        if not rows:
            continue

        def write(tx: SqlTx, rows: list[tuple[str, str]] = rows) -> None:
            tx.executemany(
                "INSERT INTO bank_last_seen (bank_id, last_seen) VALUES (?, ?)"
                " ON CONFLICT (bank_id) DO UPDATE SET last_seen = excluded.last_seen",
                rows,
            )

        await store.write(write)
        for bank_id, _ in rows:
            last_seen = fleet.banks[bank_id].last_seen
            if last_seen is not None:
                written[bank_id] = last_seen


async def initial_fleet(store: EventStore, fleet: FleetView) -> list[tuple[str, str]]:
    """Fill the fleet view from the read models; return (bank id, earliest pending expiry)."""

    def read(tx: SqlTx) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        banks = tx.query(
            "SELECT b.id, b.name, b.location, s.last_seen FROM banks b"
            " LEFT JOIN bank_last_seen s ON s.bank_id = b.id"
        )
        pending = tx.query(
            "SELECT bank_id, MIN(expires_at) FROM transactions WHERE status = 'pending'"
            " GROUP BY bank_id"
        )
        return banks, pending

    banks, pending = await store.read(read)
    for bank_id, name, location, last_seen in banks:
        status = fleet.status(bank_id, name)
        status.location = location
        if last_seen:
            status.last_seen = datetime.fromisoformat(last_seen)
    return [(bank_id, expiry) for bank_id, expiry in pending]


def mqtt_settings(settings: Settings) -> MqttSettings:
    return MqttSettings(
        host=settings.mqtt.host,
        port=settings.mqtt.port,
        client_id=settings.mqtt_client_id,
        username=settings.mqtt.username,
        password=settings.mqtt.password,
        clean_session=False,
        will=Will(topics.SERVER_STATUS, outbound.server_status(False), qos=1, retain=True),
    )


async def serve_http(
    app: Any,
    settings: Settings,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    config = hypercorn_config(settings.http_host, settings.http_port)
    await hypercorn_serve(harden(app), config, task_status=task_status)


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings, *, clock: Callable[[], datetime] = utc_now
) -> AsyncIterator[ServiceContext]:
    """Run the whole service while the block runs; used by ``serve`` and by tests."""
    async with open_store(settings.database, PROJECTIONS) as store:
        await prepare_schema(store)
        keyring = await load_keyring(store, settings.secret_key)
        directory = Directory()
        await store.read(directory.load)
        metrics = Metrics()
        fleet = FleetView()
        pending = await initial_fleet(store, fleet)
        async with (
            open_mqtt_client(mqtt_settings(settings)) as mqtt,
            trio.open_nursery() as nursery,
        ):
            dispatcher = Dispatcher(
                mqtt, on_published=lambda kind: metrics.outbound.labels(kind).inc()
            )

            def tick(bank_id: str) -> bool:
                # timers and registry refer to each other; the registry exists before any tick
                return registry.tell_nowait(bank_id, c.Tick(now=clock()))

            timers = TimerService(tick, clock)
            services = BankServices(
                store=store,
                directory=directory,
                fleet=fleet,
                dispatcher=dispatcher,
                timers=timers,
                metrics=metrics,
                clock=clock,
                command_timeout=settings.command_timeout,
            )
            registry = BankRegistry(nursery, services)
            context = ServiceContext(
                settings=settings,
                store=store,
                keyring=keyring,
                directory=directory,
                fleet=fleet,
                registry=registry,
                metrics=metrics,
                mqtt_connected=lambda: mqtt.connected,
                clock=clock,
            )
            gateway = Gateway(
                mqtt,
                registry,
                keyring,
                metrics,
                command_timeout=settings.command_timeout,
                accept_status_topic=settings.accept_status_topic,
            )
            context.extensions["gateway"] = gateway
            context.extensions["mqtt"] = mqtt
            root = Supervisor(nursery, name="root", policy=RestartPolicy(), escalate=True)
            root.start_child("dispatcher", dispatcher.run)
            root.start_child("timers", timers.run)
            root.start_child("last-seen", lambda: flush_last_seen(store, fleet))
            blueprints: list[Blueprint] = []
            for install in installers():
                blueprints.extend(await install(context, nursery))
            root.start_child("gateway", gateway.run)
            for bank_id, expiry in pending:
                timers.schedule(bank_id, datetime.fromisoformat(expiry))
            app = create_app(context, blueprints)
            context.extensions["app"] = app
            urls = await nursery.start(serve_http, app, settings)
            context.extensions["http_urls"] = urls
            log.info(
                "lockerd_started",
                http=urls,
                mqtt=f"{settings.mqtt.host}:{settings.mqtt.port}",
                database=settings.database.split("://")[0],
                banks=len(directory.banks),
            )
            try:
                yield context
            finally:
                nursery.cancel_scope.cancel()


async def serve(
    settings: Settings, *, task_status: trio.TaskStatus[ServiceContext] = trio.TASK_STATUS_IGNORED
) -> None:
    async with running_service(settings) as context:
        task_status.started(context)
        await context.shutdown.wait()
