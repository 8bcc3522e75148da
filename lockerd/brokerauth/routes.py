"""``POST /api/mosq/auth``, ``/api/mosq/superuser`` and ``/api/mosq/acl`` (contract §3).

200 to allow, 403 to deny (go-auth's ``status`` response mode; the tiny ``{"ok":…}`` body also
satisfies its ``json`` mode). Anything malformed is a 403, never a 5xx: go-auth treats a 5xx
as a backend error, which disconnects the client.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from quart import Blueprint, Response, request

from lockerd.brokerauth.checks import BrokerAuth, CheckRequest, Malformed, parse_body
from lockerd.http.context import ctx

log = structlog.get_logger("lockerd.mosq")

ALLOW_BODY = b'{"ok":true}'
DENY_BODY = b'{"ok":false}'

blueprint = Blueprint("mosq", __name__)


def _answer(allowed: bool) -> Response:
    return Response(
        ALLOW_BODY if allowed else DENY_BODY,
        status=200 if allowed else 403,
        content_type="application/json",
    )


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
async def mosq_auth() -> Response:
    return await _check("auth", BrokerAuth.authenticate)


@blueprint.post("/api/mosq/superuser")
async def mosq_superuser() -> Response:
    return await _check("superuser", BrokerAuth.superuser)


@blueprint.post("/api/mosq/acl")
async def mosq_acl() -> Response:
    return await _check("acl", BrokerAuth.check_acl)
