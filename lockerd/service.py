"""The composition root: ``lockerd serve`` builds every part here, wires them, runs them.

Nothing is looked up by name and nothing is patched on later: each part gets what it needs
through its constructor, and :class:`~lockerd.wiring.Service` holds the finished parts.

Ownership and order, outermost first (start-up runs down this list, shutdown back up it):

1. the HTTP listening socket, bound before anything else, so a port in use stops start-up at
   once with one clear line;
2. the store (its one thread) and what is loaded from it (keys, directory, fleet, agents);
3. one nursery with the bank registry's supervisor (bank actors), a root supervisor for the
   critical actors (dispatcher, timers, last-seen flusher, metrics pipeline) and the HTTP
   server (go-auth's backend). HTTP listens before MQTT connects and answers until the
   offline message is acknowledged, because the broker asks lockerd about lockerd's own
   CONNECT, publishes and will (contract §1);
4. the MQTT client, and inside it the "edge" supervisor with the gateway.

A critical actor that exceeds its restart budget escalates: the service stops with an error
rather than limp on without, say, its broker connection. Leaving ``running_service`` cancels
(4) first: the gateway publishes ``offline`` on its way out while MQTT and HTTP still run;
then the MQTT client disconnects; then (3) is cancelled, HTTP included.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import structlog
import trio
from hypercorn.trio import serve as hypercorn_serve
from quart import Blueprint

from actors.bank import BankServices
from actors.dispatcher import Dispatcher
from actors.fleet import FleetView
from actors.ports import StoredEventListener
from actors.registry import BankRegistry
from actors.supervisor import RestartPolicy, Supervisor
from actors.timers import TimerService
from domain import commands as c
from gateway import outbound, topics
from gateway.mqtt import MqttClient, MqttSettings, Will, running
from gateway.outbound import MqttOutbox
from gateway.router import Gateway
from lockerd.alerts import queries as alert_queries
from lockerd.alerts import routes as alert_routes
from lockerd.alerts.live import AlertBoard
from lockerd.alerts.webhook import AlertWebhook
from lockerd.appstream import routes as appstream_routes
from lockerd.appstream.stream import AppStreams, app_stream_metrics
from lockerd.audit import routes as audit_routes
from lockerd.banks import lifecycle_routes as bank_lifecycle_routes
from lockerd.banks import queries
from lockerd.banks import routes as bank_routes
from lockerd.banks.directory import Directory
from lockerd.banks.live import RECENT_TRANSACTIONS, LiveModel
from lockerd.banks.liveness import fill_fleet, flush_last_seen
from lockerd.brokerauth import routes as brokerauth_routes
from lockerd.brokerauth.checks import BrokerAuth
from lockerd.brokerauth.revocation import revocation_window_seconds
from lockerd.cluster import routes as cluster_routes
from lockerd.cluster.link import DuplicateNode, LinkLost
from lockerd.cluster.node import (
    CLUSTER_SETTLE_SECONDS,
    ClusterNode,
    ClusterStart,
    log_end,
    open_cluster,
    take_startup_turn,
)
from lockerd.config import Settings
from lockerd.console import routes as console_routes
from lockerd.dashboard import routes as dashboard_routes
from lockerd.dashboard.hub import StatusHub, dashboard_metrics
from lockerd.http import ops
from lockerd.http.app import LockerdApp, create_app
from lockerd.http.proxies import ASGIApp, behind_trusted_proxies
from lockerd.http.server import harden, hypercorn_config
from lockerd.keystore import create_key_table, load_keyring
from lockerd.metrics import Metrics
from lockerd.projections import EVERY_PROJECTION, refill_once
from lockerd.telemetry import routes as telemetry_routes
from lockerd.telemetry import schema as telemetry_schema
from lockerd.telemetry.agents import AgentDirectory
from lockerd.telemetry.pipeline import MetricsPipeline
from lockerd.telemetry.stream import PointStreams
from lockerd.users import admin_routes as user_admin_routes
from lockerd.users import app_routes as user_app_routes
from lockerd.users import groups as user_groups
from lockerd.users import tables as user_tables
from lockerd.users.groups import GroupService
from lockerd.users.hot_routes import with_hot_routes
from lockerd.users.sessions import SessionService
from lockerd.wiring import Service
from store import open_store
from store.base import SqlTx, StoreUnavailable

log = structlog.get_logger("lockerd.service")


def utc_now() -> datetime:
    return datetime.now(UTC)


class StartupError(Exception):
    """Start-up cannot proceed for a reason the operator must fix (one line, no traceback)."""


BLUEPRINTS = (
    ops.blueprint,
    bank_routes.blueprint,
    bank_lifecycle_routes.blueprint,
    user_admin_routes.blueprint,
    user_app_routes.blueprint,
    telemetry_routes.blueprint,
    brokerauth_routes.blueprint,
    dashboard_routes.blueprint,
    console_routes.blueprint,
    appstream_routes.blueprint,
    cluster_routes.blueprint,
    audit_routes.blueprint,
    alert_routes.blueprint,
)


def create_plain_tables(tx: SqlTx) -> None:
    """Every capability's plain tables (not projections), created if missing."""
    create_key_table(tx)
    queries.create_plain_tables(tx)
    user_tables.create_tables(tx)
    telemetry_schema.create_tables(tx)


def create_plain_tables_in_turn(tx: SqlTx) -> None:
    """:func:`create_plain_tables` when several nodes may start at once (PostgreSQL)."""
    take_startup_turn(tx)
    create_plain_tables(tx)


def bind_http(settings: Settings) -> socket.socket:
    """The HTTP listening socket, bound and listening; raises :class:`StartupError` if taken."""
    family = socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((settings.http_host, settings.http_port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        address = f"{settings.http_host}:{settings.http_port}"
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(f"LOCKERD_HTTP: {address} is already in use") from None
        raise StartupError(f"LOCKERD_HTTP: cannot listen on {address}: {exc.strerror}") from None
    return sock


def http_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def advertised_url(sock: socket.socket) -> str:
    """The URL other nodes reach this one at: the bound address, or, when bound to every
    address (``0.0.0.0``, ``::``), this host's name (a container's name under compose)."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        return f"http://{socket.gethostname()}:{port}"
    return http_url(sock)


async def serve_http(
    app: LockerdApp | ASGIApp,
    sock: socket.socket,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the already listening ``sock`` (Hypercorn takes the descriptor over),
    hardened against the keep-alive stall of Hypercorn + Quart-Trio (docs/http-server.md)."""
    config = hypercorn_config(f"fd://{sock.detach()}")
    await hypercorn_serve(harden(app), config, task_status=task_status)


def is_clustered(settings: Settings) -> bool:
    """Whether this node joins a cluster: with PostgreSQL it does (it may be the only node);
    with SQLite there is exactly one node and no cluster layer (contract §7)."""
    return settings.database.split("://", 1)[0].startswith("postgres")


def mqtt_client_id(settings: Settings) -> str:
    """Each node of a cluster has its own persistent session: ``<client id>-<node id>``."""
    if is_clustered(settings):
        return f"{settings.mqtt_client_id}-{settings.node_id}"
    return settings.mqtt_client_id


def mqtt_settings(settings: Settings) -> MqttSettings:
    return MqttSettings(
        host=settings.mqtt.host,
        port=settings.mqtt.port,
        client_id=mqtt_client_id(settings),
        username=settings.mqtt.username,
        password=settings.mqtt.password,
        clean_session=False,
        will=Will(topics.SERVER_STATUS, outbound.server_status(False), qos=1, retain=True),
        # PUBACK only once a message is applied or dropped (contract §2)
        manual_ack=True,
    )


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings,
    *,
    clock: Callable[[], datetime] = utc_now,
    blueprints: Sequence[Blueprint] = BLUEPRINTS,
) -> AsyncIterator[Service]:
    """Run the whole service while the block runs; used by ``serve`` and by tests.

    ``blueprints`` are the HTTP routes served (benchmarks add a bare baseline route).

    Raises :class:`StartupError` (the HTTP port is taken) and the store's
    ``StoreUnavailable`` before anything else has started.
    """
    listener = bind_http(settings)
    clustered = is_clustered(settings)
    try:
        async with (
            open_store(settings.database, EVERY_PROJECTION) as store,
            AsyncExitStack() as stack,
        ):
            await store.write(create_plain_tables_in_turn if clustered else create_plain_tables)
            if await refill_once(store):  # read models new to this database, from its history
                log.info("projections_refilled")
            keyring = await load_keyring(store, settings.secret_key)
            # read before the directory: the cluster's event feed starts here (never misses)
            log_position = await store.read(log_end) if clustered else 0
            start = await store.read(queries.starting_point)
            directory = Directory()
            directory.load(start)
            fleet = FleetView()
            fill_fleet(fleet, start)
            alert_board = AlertBoard(fleet)
            alert_board.load(await store.read(alert_queries.active))
            live = LiveModel(fleet)
            live.load(await store.read(queries.live_start(RECENT_TRANSACTIONS)))
            live.load_groups(*await store.read(user_groups.group_start))
            agents = AgentDirectory()
            await store.read(agents.load)
            next_seq = await store.read(telemetry_schema.max_seq) + 1
            metrics = Metrics()
            webhook = AlertWebhook(
                store,
                settings.alert_webhook_url,
                settings.node_id,
                clock,
                observe=metrics.alert_delivery,
            )
            alert_board.on_change.append(webhook.wake)
            shutdown = trio.Event()
            app_streams = AppStreams(
                live=live,
                shutdown=shutdown,
                clock=clock,
                metrics=app_stream_metrics(metrics.registry),
            )
            sessions = SessionService(
                store, keyring, clock, on_sessions_ended=[app_streams.sessions_ended]
            )
            await sessions.hasher.prepare()
            mqtt = MqttClient(mqtt_settings(settings))
            # Stored-event listeners that keep an in-memory view every node needs (read models)
            # go in ``listeners``: with a cluster they also get the events appended by other
            # nodes (the event feed). A reaction that must run once per event (a side effect)
            # must not: add it to BankServices.listeners below, where the bank's actor runs.
            listeners: list[StoredEventListener] = [
                directory.follow,
                live.follow,
                alert_board.follow,
            ]
            pipeline = MetricsPipeline(store, agents, metrics, clock, next_seq=next_seq)
            point_streams = PointStreams(pipeline, shutdown, metrics.registry)
            cluster: ClusterNode | None = None
            if clustered:
                try:
                    cluster = await stack.enter_async_context(
                        open_cluster(
                            ClusterStart(
                                database_url=settings.database,
                                node_id=settings.node_id,
                                http_url=advertised_url(listener),
                                store=store,
                                keyring=keyring,
                                listeners=list(listeners),
                                fleet=fleet,
                                known_banks=lambda: list(directory.banks),
                                after_position=log_position,
                                dropped=metrics.message_dropped,
                                pipeline=pipeline,
                            )
                        )
                    )
                except (DuplicateNode, LinkLost) as exc:
                    raise StartupError(str(exc)) from None
                listeners = cluster.local_listeners()
            # operator changes to groups reach the same listeners as a bank actor's appends
            groups = GroupService(store, listeners, clock)

            async with trio.open_nursery() as nursery:
                dispatcher = Dispatcher(MqttOutbox(mqtt), metrics)

                def tick(bank_id: str) -> bool:
                    # timers and registry refer to each other; the registry exists first
                    return registry.tell_nowait(bank_id, c.Tick())

                timers = TimerService(tick, clock)
                bank_services = BankServices(
                    store=store,
                    fleet=fleet,
                    dispatcher=dispatcher,
                    timers=timers,
                    observer=metrics,
                    clock=clock,
                    listeners=listeners,
                    record_dispatch_first=cluster is not None,
                    finish_in_flight=cluster is not None,
                    transient_store_errors=(StoreUnavailable,),
                )
                registry = BankRegistry(
                    nursery,
                    bank_services,
                    directory,
                    placement=None if cluster is None else cluster.ownership,
                )
                gateway = Gateway(
                    mqtt,
                    registry,
                    directory,
                    dispatcher,
                    keyring,
                    metrics,
                    command_timeout=settings.command_timeout,
                    accept_status_topic=settings.accept_status_topic,
                    metric_sink=pipeline.mqtt_sink,
                    revocation_window_seconds=revocation_window_seconds(
                        settings.broker_auth_cache_seconds
                    ),
                    subscriptions=(
                        topics.SUBSCRIPTIONS if cluster is None else topics.CLUSTER_SUBSCRIPTIONS
                    ),
                    keep_server_online=cluster is not None,
                    groups_of=live.groups_of,
                )
                service = Service(
                    settings=settings,
                    http_url=http_url(listener),
                    store=store,
                    tables=store,
                    keyring=keyring,
                    directory=directory,
                    fleet=fleet,
                    live=live,
                    registry=registry,
                    metrics=metrics,
                    sessions=sessions,
                    groups=groups,
                    agents=agents,
                    pipeline=pipeline,
                    point_streams=point_streams,
                    alerts=alert_board,
                    status_hub=StatusHub(
                        fleet=fleet,
                        alerts=alert_board,
                        shutdown=shutdown,
                        clock=clock,
                        metrics=dashboard_metrics(metrics.registry),
                    ),
                    app_streams=app_streams,
                    broker_auth=BrokerAuth(
                        settings,
                        keyring,
                        directory.device_users,
                        agents,
                        registry,
                        metrics.goauth_checks,
                    ),
                    mqtt=mqtt,
                    gateway=gateway,
                    clock=clock,
                    shutdown=shutdown,
                    cluster=cluster,
                )
                root = Supervisor(nursery, name="root", policy=RestartPolicy(), escalate=True)
                root.start_child("dispatcher", dispatcher.run)
                root.start_child("timers", timers.run)
                owned = None if cluster is None else cluster.ownership.is_local
                root.start_child("last-seen", lambda: flush_last_seen(store, fleet, owned))
                root.start_child("metrics-pipeline", pipeline.run)
                root.start_child("live-presence", live.watch_presence)
                root.start_child("long-polls", lambda: live.release_waiters_on(shutdown))
                root.start_child("metric-streams", point_streams.end_on_shutdown)
                root.start_child("alert-webhook", webhook.run)
                if clustered:
                    # other nodes' logouts, password changes, disabled accounts
                    root.start_child("session-ends", sessions.follow_other_nodes)
                if cluster is not None:
                    node = cluster
                    root.start_child(
                        "cluster",
                        lambda: node.run(registry, mqtt, announce_online=gateway.announce_online),
                    )
                for bank_id in start.banks_with_pending_commands:
                    # wake every bank with a pending command now: its actor resumes its
                    # outbox (publishes what was recorded but never sent) and schedules
                    # its own deadlines
                    timers.schedule(bank_id, clock())
                for bank_id in await store.read(alert_queries.banks_in_outage):
                    # and every bank in an outage not yet alerted: its actor holds the
                    # deadline (3 heartbeat intervals after it went offline)
                    timers.schedule(bank_id, clock())
                app = behind_trusted_proxies(
                    with_hot_routes(create_app(service, blueprints), service),
                    settings.trusted_proxies,
                )
                await nursery.start(serve_http, app, listener)
                async with running(mqtt), trio.open_nursery() as edge:
                    Supervisor(edge, name="edge", escalate=True).start_child("gateway", gateway.run)
                    if cluster is not None:
                        # started means subscribed: registrations and metrics published from
                        # now on are queued for this node's session (bounded: a node that
                        # cannot take a share still starts, and keeps trying)
                        with trio.move_on_after(CLUSTER_SETTLE_SECONDS):
                            await cluster.settled()
                    log.info(
                        "lockerd_started",
                        http=service.http_url,
                        mqtt=f"{settings.mqtt.host}:{settings.mqtt.port}",
                        database=settings.database.split("://")[0],
                        banks=len(directory.banks),
                    )
                    try:
                        yield service
                    finally:
                        if cluster is not None:
                            # hand every bank over at once, while MQTT and HTTP still run
                            with trio.CancelScope(shield=True), trio.move_on_after(10.0):
                                await cluster.leave()
                        # the gateway publishes "offline" on its way out, while MQTT and
                        # HTTP (go-auth's backend) still run
                        edge.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
    finally:
        listener.close()  # a no-op once Hypercorn has taken the descriptor over


def freeze_startup_heap() -> None:
    """Keep what start-up built (modules, classes, routes, loaded state) out of every later
    garbage collection.

    A full collection walks every tracked object; with the ~100,000 of a started lockerd each
    one paused the whole process for up to ~90 ms (measured in bench/bench_app.py: the tail of
    the open round trip). After ``gc.freeze()`` collections only walk what was made since.
    Only for a process that runs one service for its whole life (``lockerd serve``): frozen
    cyclic garbage is never freed, so tests, which start many services, do not call it.
    """
    gc.collect()
    gc.freeze()


async def serve(
    settings: Settings, *, task_status: trio.TaskStatus[Service] = trio.TASK_STATUS_IGNORED
) -> None:
    async with running_service(settings) as service:
        freeze_startup_heap()
        task_status.started(service)
        await service.shutdown.wait()
