"""The internal route through which nodes ask each other's bank actors.

``POST /internal/cluster/banks/{bank_id}/ask`` with ``Authorization: Bearer <cluster token>``
(:func:`lockerd.cluster.forwarding.cluster_token`) and a body from
:func:`lockerd.cluster.wire.encode_ask`. The bank must be owned here: this route never forwards
again (409 ``not_owner`` instead: the asker looks at the ownership view again), so two nodes
with different views cannot bounce a request between them. Without a cluster (SQLite), and for
anyone without the token, it is a 403.

Nodes call each other directly, at the URLs in ``cluster_nodes``, never through the public
proxy, which refuses ``/internal/`` (docker/haproxy/haproxy.cfg). The body can carry a freshly
issued device password (a provisioning reply is sent by the bank's owner): keep the nodes'
network private.
"""

from __future__ import annotations

import trio
from quart import Blueprint, Response, request

from actors.registry import MOVED, BankUnavailable, NotOwner, UnknownBank
from lockerd.cluster.wire import WireError, decode_ask, decode_command, encode_outcome
from lockerd.http.context import ctx
from lockerd.http.errors import ApiError
from lockerd.http.openapi import ResponseSpec, documented

blueprint = Blueprint("cluster", __name__)

OUTCOME = ResponseSpec(
    "The bank's outcome (state as a snapshot, events, stored events, rejection), JSON.",
    {"application/json": None},
)


@blueprint.post("/internal/cluster/banks/<bank_id>/ask")
@documented(
    (OUTCOME, 200),
    (400, "The body is not an encoded bank command."),
    (403, "Not a node of this cluster (or no cluster: SQLite)."),
    (404, "No such locker bank."),
    (409, "This node does not own the bank (`not_owner`): look again."),
    503,
)
async def ask(bank_id: str) -> Response:
    """Ask (or, with ``tell``, tell) the actor of a bank this node owns (node to node only)."""
    service = ctx()
    cluster = service.cluster
    if cluster is None or not cluster.ownership.authorized(request.headers.get("Authorization")):
        raise ApiError(403, "not a node of this cluster")
    try:
        raw = await request.get_data(as_text=False)
        body = decode_ask(raw if isinstance(raw, bytes) else raw.encode())
        command = decode_command(body.command)
    except WireError as exc:
        raise ApiError(400, str(exc)) from None
    registry = service.registry
    if not cluster.ownership.is_local(bank_id):
        raise ApiError(409, "this node does not own the bank", code="not_owner")
    try:
        if body.tell:
            await registry.tell(bank_id, command, kind=body.kind)
            return Response(b"{}", status=200, content_type="application/json")
        outcome = await registry.ask_local(
            bank_id, command, kind=body.kind, secret=body.secret, allow_new=body.allow_new
        )
    except NotOwner:
        raise ApiError(409, "this node does not own the bank", code="not_owner") from None
    except UnknownBank:
        raise ApiError(404, "no such locker bank") from None
    except (BankUnavailable, trio.TooSlowError) as exc:
        raise ApiError(503, f"locker bank unavailable ({exc!r})") from None
    if outcome.crashed == MOVED:
        raise ApiError(409, "the bank is moving to another node", code="not_owner")
    return Response(encode_outcome(outcome), status=200, content_type="application/json")
