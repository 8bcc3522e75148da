"""The app's two hottest routes, answered without the framework in their common case.

An app opens (``POST /api/compartments/{id}/open``) and then reads the transaction until it is
no longer pending, every few milliseconds (or once, with ``?wait=``). Measured on this
project's benchmark (docs/benchmarks.md, "The app's open path"), Quart's request machinery
costs about twice what Hypercorn itself costs per request, and those two routes are nearly all
of an app's requests. So :func:`with_hot_routes` puts a plain ASGI handler in front of the
Quart app for them, and only for their common case:

* ``GET /api/transactions/{id}`` with a valid bearer token (or the admin token) for a
  transaction held in memory (:class:`~lockerd.banks.live.LiveModel`) that the caller may
  read, with no query string or a valid ``?wait=``. Every other request (401, 404, a bad
  ``wait`` and its 400, a transaction old enough to be read from the store) goes to the Quart
  route unchanged;
* ``POST /api/compartments/{id}/open`` without a request body and with a valid token. It runs
  the Quart route's own function (:func:`lockerd.users.opening.request_open`) and answers
  its 202 or its error exactly as the Quart error handler would. A request with a body or
  without a valid token goes to the Quart route.

The answers are the Quart routes' answers: the same status, the same JSON bytes (written by
the Quart app's own JSON provider), the same long-poll rules (:func:`transaction_answer`).
The Quart routes stay the documented ones in /openapi.json.
``tests/lockerd/users/test_hot_routes.py`` holds the two paths to the same answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs

import structlog
import trio

from domain.keys import constant_time_equals
from lockerd.banks.queries import TransactionView
from lockerd.http.auth import BOOTSTRAP_ADMIN_ID, Principal
from lockerd.http.errors import ApiError
from lockerd.users.opening import request_open

if TYPE_CHECKING:
    from lockerd.wiring import Service

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

log = structlog.get_logger("lockerd.http")

PREFIX: Final = "/api/transactions/"
OPEN_PREFIX: Final = "/api/compartments/"
OPEN_SUFFIX: Final = "/open"
MAX_WAIT_SECONDS: Final = 30


def encoder(app: Any) -> Callable[[dict[str, Any]], bytes]:
    """JSON exactly as the Quart ``app`` answers a dict: its own JSON provider (key order,
    ASCII escapes), compact, with the final newline."""
    provider = app.json

    def encode(document: dict[str, Any]) -> bytes:
        text: str = provider.dumps(document, separators=(",", ":"))
        return text.encode() + b"\n"

    return encode


def parse_wait(raw: list[str]) -> int | None:
    """``?wait=`` values as whole seconds 1-30; None when absent; raises ``ValueError``."""
    if not raw:
        return None
    if len(raw) > 1 or not raw[0].isascii() or not raw[0].isdigit():
        raise ValueError("wait must be a whole number of seconds")
    seconds = int(raw[0])
    if not 1 <= seconds <= MAX_WAIT_SECONDS:
        raise ValueError("wait out of range")
    return seconds


async def transaction_answer(
    service: Service, view: TransactionView, wait: int | None
) -> TransactionView:
    """The view to answer with: at once, or (``wait``) once it is no longer pending or after
    ``wait`` seconds, whichever comes first (then as it stands)."""
    if wait is None or view.status != "pending":
        return view
    with trio.move_on_after(wait):
        await service.live.settled(view.transaction_id)
    return service.live.transaction(view.transaction_id) or view


def _bearer(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


async def _principal(service: Service, token: str) -> Principal | None:
    """What :func:`lockerd.http.auth.authenticate` answers, without a request context."""
    if constant_time_equals(token, service.settings.admin_token):
        return Principal(BOOTSTRAP_ADMIN_ID, "admin")
    return await service.sessions.resolve(token)


def with_hot_routes(app: ASGIApp, service: Service) -> ASGIApp:
    """Wrap the Quart ``app``: the common case of the hot route is answered here."""
    encode = encoder(app)

    async def hot(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            method = scope["method"]
            if method == "GET" and path.startswith(PREFIX):
                if await _transaction(service, scope, send, encode):
                    return
            elif (
                method == "POST"
                and path.startswith(OPEN_PREFIX)
                and path.endswith(OPEN_SUFFIX)
                and await _open(service, scope, send, encode)
            ):
                return
        await app(scope, receive, send)

    return hot


async def _transaction(
    service: Service, scope: Any, send: Any, encode: Callable[[dict[str, Any]], bytes]
) -> bool:
    """Answer ``GET /api/transactions/{id}`` if it is the common case; False: not handled."""
    transaction_id = scope["path"][len(PREFIX) :]
    view = service.live.transaction(transaction_id)
    if view is None:
        return False  # unknown, malformed, not canonical, or only in the store
    wait = None
    query = scope.get("query_string", b"")
    if query:
        try:
            arguments = parse_qs(query.decode("latin1"), keep_blank_values=True)
            if set(arguments) - {"wait"}:
                return False
            wait = parse_wait(arguments.get("wait", []))
        except ValueError:
            return False  # the Quart route answers the 400
    token = _bearer(scope.get("headers", []))
    if token is None:
        return False
    principal = await _principal(service, token)
    if principal is None or not (principal.is_admin or view.user_id == principal.user_id):
        return False
    answer = await transaction_answer(service, view, wait)
    await _answer(send, 200, encode(answer.to_json()))
    return True


def _without_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return False
    return True


async def _open(
    service: Service, scope: Any, send: Any, encode: Callable[[dict[str, Any]], bytes]
) -> bool:
    """Answer ``POST /api/compartments/{id}/open`` if it is the common case (see the module
    docstring); False: not handled, nothing done."""
    compartment_id = scope["path"][len(OPEN_PREFIX) : -len(OPEN_SUFFIX)]
    headers = scope.get("headers", [])
    if "/" in compartment_id or not _without_body(headers):
        return False
    token = _bearer(headers)
    if token is None:
        return False
    principal = await _principal(service, token)
    if principal is None:
        return False
    try:
        body, status = await request_open(service, principal, compartment_id), 202
    except ApiError as error:
        body, status = {"error": error.code, "message": error.message, **error.extra}, error.status
    except Exception as error:  # as the Quart app's handler of the unexpected: a bug to fix
        log.error("unhandled_exception", exc_info=error)
        body, status = {"error": "internal_error", "message": "internal error"}, 500
    await _answer(send, status, encode(body))
    return True


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
