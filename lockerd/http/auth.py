"""Bearer-token authentication for the HTTP API.

The bootstrap admin token comes from ``LOCKERD_ADMIN_TOKEN``; user sessions are resolved by
the service's :class:`~lockerd.users.sessions.SessionService`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import TYPE_CHECKING, Literal, ParamSpec, TypeVar

from quart import request

from domain.actor import Actor
from domain.keys import constant_time_equals
from lockerd.http.context import ctx
from lockerd.http.errors import ApiError

if TYPE_CHECKING:
    from lockerd.wiring import Service

Role = Literal["user", "admin"]
BOOTSTRAP_ADMIN_ID = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def actor(self) -> Actor:
        """Who this principal is in the events it causes (contract §5)."""
        if self.user_id == BOOTSTRAP_ADMIN_ID:
            return Actor.admin_token()
        return Actor.user(self.user_id)


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(token: str | None, service: Service | None = None) -> Principal | None:
    """Who ``token`` is. ``service`` is given where no request context exists (a streamed
    response body checking its token again)."""
    if token is None:
        return None
    service = ctx() if service is None else service
    if constant_time_equals(token, service.settings.admin_token):
        return Principal(BOOTSTRAP_ADMIN_ID, "admin")
    return await service.sessions.resolve(token)


async def require_user() -> Principal:
    principal = await authenticate(bearer_token())
    if principal is None:
        raise ApiError(401, "missing or invalid bearer token")
    return principal


async def require_admin() -> Principal:
    principal = await require_user()
    if not principal.is_admin:
        raise ApiError(403, "this route needs the admin role")
    return principal


P = ParamSpec("P")
R = TypeVar("R")


def admin_first(handler: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Check the admin role before anything else, the body included (place it above the body
    decorator): without a token 401, with a user token 403, whatever the body (contract §4)."""

    @wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        await require_admin()
        return await handler(*args, **kwargs)

    return wrapper
