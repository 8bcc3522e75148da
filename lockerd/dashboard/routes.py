"""``GET /dashboard`` (the page and its assets) and the ``/ws/status`` websocket.

/openapi.json documents the page and the assets as text; OpenAPI 3 cannot describe a
websocket, so ``/ws/status`` is not in it (quart-schema leaves websocket routes out).
"""

from __future__ import annotations

from typing import Any, Final, cast

from quart import Blueprint, Response, websocket
from quart.wrappers import Websocket

from lockerd.http.auth import authenticate
from lockerd.http.context import ctx
from lockerd.http.errors import ApiError
from lockerd.http.openapi import ResponseSpec, documented
from lockerd.http.static import static_response
from lockerd.http.websocket import QuartTransport

STATIC_PACKAGE: Final = "lockerd.dashboard"
STATIC_FILES: Final = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

PAGE: Final = ResponseSpec(
    "The HTML page; it follows /ws/status live.", {STATIC_FILES["dashboard.html"]: None}
)
ASSET: Final = ResponseSpec(
    "The page's script (dashboard.js) or style sheet (dashboard.css).",
    {STATIC_FILES["dashboard.js"]: None, STATIC_FILES["dashboard.css"]: None},
)

blueprint = Blueprint("dashboard", __name__)


def static_file(name: str) -> Response:
    return static_response(STATIC_PACKAGE, STATIC_FILES, name, CONTENT_SECURITY_POLICY)


@blueprint.get("/dashboard")
@documented((PAGE, 200))
async def dashboard_page() -> Response:
    """The operators' dashboard: every locker bank actor, live."""
    return static_file("dashboard.html")


@blueprint.get("/dashboard/<name>")
@documented((ASSET, 200), (404, "No such file."))
async def dashboard_asset(name: str) -> Response:
    """A static asset of the dashboard."""
    if name not in STATIC_FILES or name.endswith(".html"):
        raise ApiError(404, "no such file")
    return static_file(name)


@blueprint.websocket("/ws/status")
async def status_socket() -> None:
    """The live status stream (``?token=<admin token>``): a snapshot, then every change.

    Not in /openapi.json: OpenAPI 3 cannot describe a websocket.
    """
    principal = await authenticate(websocket.args.get("token") or None)
    if principal is None:
        raise ApiError(401, "missing or invalid token")
    if not principal.is_admin:
        raise ApiError(403, "the status stream needs the admin role")
    await websocket.accept()
    ws: Websocket = cast(Any, websocket)._get_current_object()
    await ctx().status_hub.stream(QuartTransport(ws))
