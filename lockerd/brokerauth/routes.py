"""``POST /api/mosq/auth``, ``/api/mosq/superuser`` and ``/api/mosq/acl`` (contract §3).

200 to allow, 403 to deny (go-auth's ``status`` response mode; the tiny ``{"ok":…}`` body also
satisfies its ``json`` mode). Anything malformed is a 403, never a 5xx: go-auth treats a 5xx
as a backend error, which disconnects the client.

The models below document the routes in /openapi.json only: bodies are parsed by
:func:`~lockerd.brokerauth.checks.parse_body` (JSON as documented, or the same fields
form-encoded), the query string is read as it comes, and the answers are built here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec
import structlog
from quart import Blueprint, Response, request
from quart_schema import document_querystring, document_request, document_response

from lockerd.brokerauth.checks import BrokerAuth, CheckRequest, Malformed, parse_body
from lockerd.http.context import ctx
from lockerd.http.openapi import ResponseSpec, documented
from lockerd.http.validation import own_input_rules

log = structlog.get_logger("lockerd.mosq")

ALLOW_BODY = b'{"ok":true}'
DENY_BODY = b'{"ok":false}'

blueprint = Blueprint("mosq", __name__)


class MosqQuery(msgspec.Struct):
    """The query string go-auth sends (documentation only)."""

    mosq_secret: Annotated[
        str, msgspec.Meta(description="LOCKERD_MOSQ_SECRET; wrong or missing: 403")
    ]


ClientId = Annotated[str, msgspec.Meta(description="the MQTT client id")]
ClientIdAlias = Annotated[str, msgspec.Meta(description="alias of clientid (amqtt)")]


class AuthCheckIn(msgspec.Struct):
    """A CONNECT's credentials, as go-auth sends them."""

    username: str
    password: str
    clientid: ClientId | msgspec.UnsetType = msgspec.UNSET
    client_id: ClientIdAlias | msgspec.UnsetType = msgspec.UNSET


class SuperuserCheckIn(msgspec.Struct):
    """Whether a user is a superuser, as go-auth asks it."""

    username: str


class AclCheckIn(msgspec.Struct):
    """One publish, subscription or delivery, as go-auth asks about it."""

    username: str
    topic: Annotated[str, msgspec.Meta(description="the topic, or the filter as subscribed")]
    acc: Annotated[
        Literal[1, 2, 4],
        msgspec.Meta(description="1 read (delivery), 2 write (publish, last will), 4 subscribe"),
    ]
    clientid: ClientId | msgspec.UnsetType = msgspec.UNSET
    client_id: ClientIdAlias | msgspec.UnsetType = msgspec.UNSET


class CheckOut(msgspec.Struct):
    """go-auth reads the status; the body also satisfies its ``json`` response mode."""

    ok: bool


ALLOWED: Final = ResponseSpec('Allowed: `{"ok":true}`.', {"application/json": CheckOut})
DENIED: Final = ResponseSpec(
    'Denied: `{"ok":false}` (also for a wrong or missing mosq_secret, or a malformed body).',
    {"application/json": CheckOut},
)


def _answer(allowed: bool) -> Response:
    return Response(
        ALLOW_BODY if allowed else DENY_BODY,
        status=200 if allowed else 403,
        content_type="application/json",
    )


F = TypeVar("F", bound=Callable[..., Any])


def _documented_check(body: type) -> Callable[[F], F]:
    """The answers every go-auth check has: 200 allow, 403 deny, the secret in the query."""

    def decorator(func: F) -> F:
        # go-auth's bodies come JSON or form-encoded, and anything malformed is a deny
        func = own_input_rules(func)
        func = document_querystring(MosqQuery)(func)
        func = document_request(body)(func)
        func = document_response(DENIED, 403)(func)
        return documented((ALLOWED, 200))(func)

    return decorator


async def _check(name: str, check: Callable[[BrokerAuth, CheckRequest], bool]) -> Response:
    auth = ctx().broker_auth
    allowed = False
    try:
        if auth.secret_ok(request.args.get("mosq_secret")):
            body = await request.get_data(cache=False)
            assert isinstance(body, bytes)
            allowed = check(auth, parse_body(request.content_type or "", body))
    except Malformed as exc:
        log.info("goauth_malformed", endpoint=name, reason=str(exc))
    except Exception as exc:  # go-auth must get a deny, never a 5xx
        log.warning("goauth_check_failed", endpoint=name, error=repr(exc))
        allowed = False
    auth.count(name, allowed)
    return _answer(allowed)


@blueprint.post("/api/mosq/auth")
@_documented_check(AuthCheckIn)
async def mosq_auth() -> Response:
    """May this client connect with these credentials?

    The body is JSON as documented, or the same fields form-encoded.
    """
    return await _check("auth", BrokerAuth.authenticate)


@blueprint.post("/api/mosq/superuser")
@_documented_check(SuperuserCheckIn)
async def mosq_superuser() -> Response:
    """Is this user a superuser (the backend's own broker user)?

    The body is JSON as documented, or the same fields form-encoded.
    """
    return await _check("superuser", BrokerAuth.superuser)


@blueprint.post("/api/mosq/acl")
@_documented_check(AclCheckIn)
async def mosq_acl() -> Response:
    """May this client publish, subscribe to or receive on this topic?

    The body is JSON as documented, or the same fields form-encoded.
    """
    return await _check("acl", BrokerAuth.check_acl)
