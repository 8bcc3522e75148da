"""HTTP routes of the telemetry capability.

Admin (bearer token with the admin role; the role is checked before anything else):

* ``POST /api/admin/tenants`` ``{"name"}`` -> 201 ``{"id"}``
* ``GET /api/admin/tenants`` -> ``[{"id","name","agents":[{"agent_id","name","mqtt_user"}]}]``
* ``POST /api/admin/tenants/{id}/agents`` ``{"name"}`` -> 201
  ``{"agent_id","mqtt_user","mqtt_password"}`` (404 unknown tenant)
* ``GET /api/admin/tenants/{id}/metrics?agent_id=&metric=&since=&limit=&format=csv``
* ``GET /api/admin/tenants/{id}/metrics/stream`` -> ``text/event-stream``: every point stored
  from now on (both ingestion paths, every node), one ``data:`` line each
  (:mod:`lockerd.telemetry.stream`). The admin token may also come as ``?token=``, because a
  browser's ``EventSource`` cannot set headers.

Agents (HTTP Basic with the agent's ``mqtt_user``/``mqtt_password``):

* ``POST /api/metrics`` ``{"metric","value","timestamp"?,"dedupe_id"?}`` -> 202
  ``{"status":"stored"|"duplicate"}``; the point has been written (or recognised as a repeat
  of its ``dedupe_id``) when the answer comes.

The ``...Out`` models document the answers in /openapi.json only (the handlers build them).
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Final, Literal

import msgspec
from quart import Blueprint, Response, request
from quart_schema import document_querystring, document_request

from lockerd.http.auth import authenticate, bearer_token, require_admin
from lockerd.http.context import ctx
from lockerd.http.errors import ApiError, error_response
from lockerd.http.ids import parse_id
from lockerd.http.openapi import IsoTime, ResponseSpec, documented
from lockerd.http.validation import decode_body, require_json_media_type
from lockerd.telemetry.agents import Agent
from lockerd.telemetry.pipeline import PipelineUnavailable
from lockerd.telemetry.points import HttpMetricIn, Rejected, parse_timestamp
from lockerd.telemetry.query import DEFAULT_LIMIT, MAX_LIMIT, PointQuery, read_points, to_csv

blueprint = Blueprint("telemetry", __name__)

BASIC_REALM = 'Basic realm="lockerd metrics", charset="UTF-8"'
# "+02:00" in an unencoded query string arrives as " 02:00"
_SPACED_OFFSET = re.compile(r" (\d{2}(?::?\d{2})?)$")


class TenantIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class AgentIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class MetricsQuery(msgspec.Struct):
    """The query string of ``GET /api/admin/tenants/{id}/metrics`` (documentation only)."""

    agent_id: (
        Annotated[str, msgspec.Meta(description="only this agent's points")] | msgspec.UnsetType
    ) = msgspec.UNSET
    metric: Annotated[str, msgspec.Meta(description="only this metric")] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    since: (
        Annotated[str, msgspec.Meta(description="ISO 8601; points at or after it")]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    limit: Annotated[
        int, msgspec.Meta(ge=1, le=MAX_LIMIT, description="at most this many points")
    ] = DEFAULT_LIMIT
    format: Literal["json", "csv"] = "json"


class CreatedTenantOut(msgspec.Struct):
    """The created tenant."""

    id: str


class TenantAgentOut(msgspec.Struct):
    """A metrics agent of a tenant."""

    agent_id: str
    name: str
    mqtt_user: str


class TenantOut(msgspec.Struct):
    """A tenant and its metrics agents."""

    id: str
    name: str
    agents: list[TenantAgentOut]


class CreatedAgentOut(msgspec.Struct):
    """The created agent and its credentials (the password is shown once)."""

    agent_id: str
    mqtt_user: str
    mqtt_password: str


class PointOut(msgspec.Struct):
    """A stored metric point."""

    agent_id: str
    metric: str
    value: float
    timestamp: IsoTime


class IngestOut(msgspec.Struct):
    """The point has been written, or recognised as a repeat of its ``dedupe_id``."""

    status: Literal["stored", "duplicate"]


class StreamQuery(msgspec.Struct):
    """The query string of the live metric stream (documentation only)."""

    token: (
        Annotated[
            str,
            msgspec.Meta(
                description="the admin token, for clients that cannot send an Authorization"
                " header (a browser's EventSource); the header wins when both are given"
            ),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET


POINT_STREAM: Final = ResponseSpec(
    "Server-sent events: `retry: 3000` and `: subscribed` first, then one"
    ' `data: {"agent_id","metric","value","timestamp"}` per point stored from then on (either'
    " ingestion path, any node); a `: keep-alive` comment after 15 s without a point; a last"
    " `event: dropped` when the client fell more than 1000 points behind (the stream ends; an"
    " EventSource reconnects by itself). The stream ends when lockerd stops or the token ends.",
    {"text/event-stream": None},
)

POINTS: Final = ResponseSpec(
    "The points, oldest first: JSON, or CSV (header agent_id,metric,value,timestamp) with"
    " format=csv.",
    {"application/json": list[PointOut], "text/csv": None},
)


async def body_bytes() -> bytes:
    raw = await request.get_data(cache=True)
    return raw if isinstance(raw, bytes) else raw.encode()


def known_tenant(tenant_id: str) -> str:
    tenant_id = parse_id(tenant_id, "tenant")
    if not ctx().agents.has_tenant(tenant_id):
        raise ApiError(404, "no such tenant")
    return tenant_id


# -------------------------------------------------------------------- admin: tenants, agents


@blueprint.post("/api/admin/tenants")
@documented((CreatedTenantOut, 201), 400, 401, 403, 413)
@document_request(TenantIn)
async def create_tenant() -> tuple[dict[str, Any], int]:
    """Create a tenant."""
    principal = await require_admin()
    data = decode_body(TenantIn, await body_bytes())
    service = ctx()
    tenant = await ctx().agents.create_tenant(
        service.tables, data.name, service.clock(), actor=principal.actor
    )
    return {"id": tenant.tenant_id}, 201


@blueprint.get("/api/admin/tenants")
@documented((list[TenantOut], 200), 401, 403)
async def list_tenants() -> list[dict[str, Any]]:
    """Every tenant with its metrics agents."""
    await require_admin()
    directory = ctx().agents
    by_tenant: dict[str, list[dict[str, Any]]] = {}
    for agent in directory.agents.values():
        by_tenant.setdefault(agent.tenant_id, []).append(
            {"agent_id": agent.agent_id, "name": agent.name, "mqtt_user": agent.mqtt_user}
        )
    return [
        {"id": tenant.tenant_id, "name": tenant.name, "agents": by_tenant.get(tenant.tenant_id, [])}
        for tenant in directory.tenants.values()
    ]


@blueprint.post("/api/admin/tenants/<tenant_id>/agents")
@documented((CreatedAgentOut, 201), 400, 401, 403, (404, "No such tenant."), 413)
@document_request(AgentIn)
async def create_agent(tenant_id: str) -> tuple[dict[str, Any], int]:
    """Create a metrics agent of a tenant, with its broker credentials."""
    principal = await require_admin()
    tenant_id = known_tenant(tenant_id)
    data = decode_body(AgentIn, await body_bytes())
    service = ctx()
    created = await ctx().agents.create_agent(
        service.tables,
        service.keyring,
        tenant_id,
        data.name,
        service.clock(),
        actor=principal.actor,
    )
    return {
        "agent_id": created.agent.agent_id,
        "mqtt_user": created.agent.mqtt_user,
        "mqtt_password": created.mqtt_password,
    }, 201


# -------------------------------------------------------------------- admin: query


def _since(text: str) -> int:
    text = _SPACED_OFFSET.sub(r"+\1", text)
    try:
        return parse_timestamp(text)
    except Rejected as exc:
        raise ApiError(400, f"since: {exc.message}") from None


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ApiError(400, f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(text)


@blueprint.get("/api/admin/tenants/<tenant_id>/metrics")
@documented(
    (POINTS, 200),
    (400, "A bad format, since or limit."),
    401,
    403,
    (404, "No such tenant."),
)
@document_querystring(MetricsQuery)
async def query_metrics(tenant_id: str) -> Any:
    """A tenant's stored metric points."""
    await require_admin()
    tenant_id = known_tenant(tenant_id)
    args = request.args
    fmt = args.get("format", "") or "json"
    if fmt not in ("json", "csv"):
        raise ApiError(400, "format must be json or csv")
    since = args.get("since", "")
    limit = args.get("limit", "")
    query = PointQuery(
        tenant_id=tenant_id,
        agent_id=args.get("agent_id") or None,
        metric=args.get("metric") or None,
        since_us=_since(since) if since else None,
        limit=_limit(limit) if limit else DEFAULT_LIMIT,
    )
    rows = await ctx().tables.read(read_points(query))
    if fmt == "csv":
        return Response(to_csv(rows), content_type="text/csv; charset=utf-8")
    return [row.as_json() for row in rows]


@blueprint.get("/api/admin/tenants/<tenant_id>/metrics/stream")
@documented(
    (POINT_STREAM, 200),
    (401, "No token, or a bad one (header or ?token=)."),
    403,
    (404, "No such tenant."),
)
@document_querystring(StreamQuery)
async def stream_metrics(tenant_id: str) -> Response:
    """A tenant's metric points, live, as server-sent events."""
    token = bearer_token() or request.args.get("token") or None
    principal = await authenticate(token)
    if principal is None:
        raise ApiError(401, "missing or invalid token (Authorization header or ?token=)")
    if not principal.is_admin:
        raise ApiError(403, "this route needs the admin role")
    tenant_id = known_tenant(tenant_id)
    service = ctx()  # the body runs after the request context has gone

    async def still_allowed() -> bool:
        now = await authenticate(token, service)
        return now is not None and now.is_admin

    body = service.point_streams.events(tenant_id, still_allowed)
    response = Response(body, content_type="text/event-stream; charset=utf-8")
    response.timeout = None  # a stream has no end; Quart's 60 s response timeout must not apply
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # proxies must not buffer the events
    return response


# -------------------------------------------------------------------- agents: ingest


def basic_credentials() -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        return None
    return user, password


def authenticated_agent() -> Agent | None:
    credentials = basic_credentials()
    if credentials is None:
        return None
    return ctx().agents.authenticate(ctx().keyring, *credentials)


@blueprint.post("/api/metrics")
@documented(
    (IngestOut, 202),
    400,
    (401, "HTTP Basic credentials of a metrics agent are required (WWW-Authenticate: Basic)."),
    413,
    (503, "The metric store is unavailable; nothing was stored."),
)
@document_request(HttpMetricIn)
async def ingest_metric() -> Any:
    """Store one metric point (HTTP Basic with an agent's mqtt_user/mqtt_password)."""
    agent = authenticated_agent()
    if agent is None:
        response = error_response(
            401, "unauthorized", "HTTP Basic credentials of a metrics agent are required"
        )
        response.headers["WWW-Authenticate"] = BASIC_REALM
        return response
    body = await body_bytes()
    require_json_media_type(body)
    try:
        outcome = await ctx().pipeline.submit_http(agent, body)
    except Rejected as exc:
        raise ApiError(400, exc.message) from None
    except PipelineUnavailable as exc:
        raise ApiError(503, str(exc)) from None
    return {"status": outcome}, 202
