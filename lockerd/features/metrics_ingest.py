"""Metrics ingestion (issue 7): tenants, agents, the MQTT bridge and ``POST /api/metrics``.

Installs, in order: the plain tables, the in-memory agent directory
(``context.extensions["agents"]``, whose ``credential(username)`` the go-auth endpoints use), the
ingestion actor (``context.extensions["metrics_pipeline"]``, started in ``nursery``), the
gateway's ``metric_sink`` (so ``metrics/{tenant}/{agent}/{metric}`` messages enter the same
pipeline as HTTP), and the HTTP routes. See docs/metrics-bridge.md.
"""

from __future__ import annotations

import trio
from quart import Blueprint

from lockerd.context import ServiceContext
from lockerd.telemetry import http
from lockerd.telemetry.agents import AgentDirectory
from lockerd.telemetry.pipeline import MetricsPipeline
from lockerd.telemetry.schema import create_tables, max_seq


async def install(context: ServiceContext, nursery: trio.Nursery) -> list[Blueprint]:
    store = context.store
    await store.write(create_tables)
    agents = AgentDirectory()
    await store.read(agents.load)
    next_seq = await store.read(max_seq) + 1
    pipeline = MetricsPipeline(store, agents, context.metrics, context.clock, next_seq=next_seq)
    await nursery.start(pipeline.run)
    context.extensions["agents"] = agents
    context.extensions["metrics_pipeline"] = pipeline
    gateway = context.extensions.get("gateway")
    if gateway is not None:
        gateway.metric_sink = pipeline.mqtt_sink
    return [http.blueprint]
