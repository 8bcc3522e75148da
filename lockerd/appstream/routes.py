"""The ``/ws/app`` websocket (contract §4; OpenAPI 3 cannot describe a websocket, so it is
documented in docs/api-app.md, not in /openapi.json)."""

from __future__ import annotations

from typing import Any, cast

from quart import Blueprint, websocket
from quart.wrappers import Websocket

from lockerd.http.auth import authenticate
from lockerd.http.context import ctx
from lockerd.http.errors import ApiError
from lockerd.http.websocket import QuartTransport

blueprint = Blueprint("appstream", __name__)


@blueprint.websocket("/ws/app")
async def app_socket() -> None:
    """The signed-in user's live compartments and transactions (``?token=<user token>``).

    A missing or bad token refuses the handshake (401); the bootstrap admin token is accepted
    (it has no grants and no transactions of its own).
    """
    token = websocket.args.get("token") or None
    principal = await authenticate(token)
    if principal is None or token is None:
        raise ApiError(401, "missing or invalid token")
    service = ctx()
    await websocket.accept()
    ws: Websocket = cast(Any, websocket)._get_current_object()
    await service.app_streams.stream(
        QuartTransport(ws), principal.user_id, service.sessions.token_hash(token)
    )
