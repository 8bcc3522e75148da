"""Health and Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from quart import Blueprint, Response, jsonify

from lockerd.http.context import ctx
from store.base import StoreUnavailable

blueprint = Blueprint("ops", __name__)


@blueprint.get("/healthz")
async def healthz() -> Response:
    service = ctx()
    mqtt = "connected" if service.mqtt.connected else "disconnected"
    try:
        await service.store.ping()
        store = "ok"
    except StoreUnavailable:
        store = "unavailable"
    healthy = mqtt == "connected" and store == "ok"
    response = jsonify({"status": "ok" if healthy else "degraded", "mqtt": mqtt, "store": store})
    response.status_code = 200 if healthy else 503
    return response


@blueprint.get("/metrics")
async def metrics() -> Response:
    service = ctx()
    service.metrics.mailbox_depth.set(service.registry.mailbox_total())
    return Response(service.metrics.render(), content_type=CONTENT_TYPE_LATEST)
