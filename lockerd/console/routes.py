"""``GET /console`` (the page) and ``GET /console/<name>`` (its ES modules and style sheet).

The console is plain static files: no build step, nothing fetched from elsewhere at run time.
It talks to lockerd only through the public API (REST, ``/ws/status``, the metrics stream),
with the admin token the operator signs in with; these routes need no token themselves.
Only the files listed in :data:`STATIC_FILES` are served (anything else is a 404).
"""

from __future__ import annotations

from typing import Final

from quart import Blueprint, Response

from lockerd.http.errors import ApiError
from lockerd.http.openapi import ResponseSpec, documented
from lockerd.http.static import static_response

STATIC_PACKAGE: Final = "lockerd.console"
HTML: Final = "text/html; charset=utf-8"
SCRIPT: Final = "text/javascript; charset=utf-8"
STYLE: Final = "text/css; charset=utf-8"
MODULES: Final = (
    "app.js",
    "api.js",
    "ui.js",
    "format.js",
    "fleet.js",
    "bank.js",
    "people.js",
    "alerts.js",
    "audit.js",
    "metrics.js",
)
STATIC_FILES: Final = {
    "console.html": HTML,
    "console.css": STYLE,
    **{name: SCRIPT for name in MODULES},
}
# No inline script or style; everything from this origin (the API, the websocket, the stream).
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

PAGE: Final = ResponseSpec("The console's HTML page.", {HTML: None})
ASSET: Final = ResponseSpec(
    "One of the console's ES modules or its style sheet.", {SCRIPT: None, STYLE: None}
)

blueprint = Blueprint("console", __name__)


def static_file(name: str) -> Response:
    return static_response(STATIC_PACKAGE, STATIC_FILES, name, CONTENT_SECURITY_POLICY)


@blueprint.get("/console")
@documented((PAGE, 200))
async def console_page() -> Response:
    """The operators' web console: the fleet live and every operator action (contract §5)."""
    return static_file("console.html")


@blueprint.get("/console/<name>")
@documented((ASSET, 200), (404, "No such file."))
async def console_asset(name: str) -> Response:
    """A static file of the console (an ES module or the style sheet)."""
    if name not in STATIC_FILES or name.endswith(".html"):
        raise ApiError(404, "no such file")
    return static_file(name)
