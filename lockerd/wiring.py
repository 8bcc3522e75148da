"""The parts of one running lockerd, typed: what the composition root builds and hands out.

:class:`Service` is built once by :func:`lockerd.service.running_service` and never changed
afterwards (no part is added or patched on later); request handlers reach it through
:func:`lockerd.http.context.ctx`, the CLI and tests get it from ``running_service``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import trio

from actors.fleet import FleetView
from actors.registry import BankRegistry
from domain.keys import Keyring
from gateway.mqtt import MqttClient
from gateway.router import Gateway
from lockerd.alerts.live import AlertBoard
from lockerd.appstream.stream import AppStreams
from lockerd.banks.directory import Directory
from lockerd.banks.live import LiveModel
from lockerd.brokerauth.checks import BrokerAuth
from lockerd.cluster.node import ClusterNode
from lockerd.config import Settings
from lockerd.dashboard.hub import StatusHub
from lockerd.metrics import Metrics
from lockerd.telemetry.agents import AgentDirectory
from lockerd.telemetry.pipeline import MetricsPipeline
from lockerd.telemetry.stream import PointStreams
from lockerd.users.groups import GroupService
from lockerd.users.sessions import SessionService
from store.base import EventStore, Tables


@dataclass(frozen=True, slots=True, eq=False)
class Service:
    settings: Settings
    http_url: str
    store: EventStore
    tables: Tables
    keyring: Keyring
    directory: Directory
    fleet: FleetView
    #: the app's hot reads (transactions, grants, compartments) kept in memory
    live: LiveModel
    registry: BankRegistry
    metrics: Metrics
    sessions: SessionService
    #: groups of users (operator streams); their changes feed the live model
    groups: GroupService
    agents: AgentDirectory
    pipeline: MetricsPipeline
    #: the live metric streams (server-sent events) fed by the pipeline
    point_streams: PointStreams
    #: every active alert (open, or acknowledged while it lasts), live: the fleet view's
    #: ``alerts`` and the alert messages of ``/ws/status``
    alerts: AlertBoard
    status_hub: StatusHub
    app_streams: AppStreams
    broker_auth: BrokerAuth
    mqtt: MqttClient
    gateway: Gateway
    clock: Callable[[], datetime]
    #: set when the service is asked to stop (SIGTERM); long-lived streams close on it
    shutdown: trio.Event
    #: this node's part in a cluster (PostgreSQL); None with SQLite: one node owns every bank
    cluster: ClusterNode | None = None
