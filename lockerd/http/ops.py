"""Health and Prometheus metrics."""

from __future__ import annotations

from typing import Final, Literal

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST
from quart import Blueprint, Response, jsonify
from quart_schema import document_response

from lockerd.http.context import ctx
from lockerd.http.openapi import ResponseSpec, documented
from store.base import StoreUnavailable

blueprint = Blueprint("ops", __name__)


class HealthOut(msgspec.Struct):
    """The state of the MQTT connection and of the store (documentation only)."""

    status: Literal["ok", "degraded"]
    mqtt: Literal["connected", "disconnected"]
    store: Literal["ok", "unavailable"]
    node: str
    banks: int


HEALTHY: Final = ResponseSpec("Everything is up.", {"application/json": HealthOut})
DEGRADED: Final = ResponseSpec(
    'Something is down: `"status":"degraded"`.', {"application/json": HealthOut}
)
PROMETHEUS_TEXT: Final = ResponseSpec(
    f"Prometheus text exposition format ({CONTENT_TYPE_LATEST}); among others the counter"
    " lockerd_inbound_messages_total{kind,outcome}.",
    {CONTENT_TYPE_LATEST.split(";", 1)[0]: None},
)


@blueprint.get("/healthz")
@documented((HEALTHY, 200))
@document_response(DEGRADED, 503)
async def healthz() -> Response:
    """Whether lockerd is connected to the broker and its store answers."""
    service = ctx()
    mqtt = "connected" if service.mqtt.connected else "disconnected"
    try:
        await service.store.ping()
        store = "ok"
    except StoreUnavailable:
        store = "unavailable"
    healthy = mqtt == "connected" and store == "ok"
    response = jsonify(
        {
            "status": "ok" if healthy else "degraded",
            "mqtt": mqtt,
            "store": store,
            # contract §7: this node's name and how many bank actors it owns
            "node": service.settings.node_id,
            "banks": service.registry.running_count(),
        }
    )
    response.status_code = 200 if healthy else 503
    return response


@blueprint.get("/metrics")
@documented((PROMETHEUS_TEXT, 200))
async def metrics() -> Response:
    """Prometheus metrics."""
    service = ctx()
    service.metrics.mailbox_depth.set(service.registry.mailbox_total())
    return Response(service.metrics.render(), content_type=CONTENT_TYPE_LATEST)
