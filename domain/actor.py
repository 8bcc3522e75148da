"""Who made a change: every operator action's event names its actor (contract §5).

An actor is either a signed-in user (``{"kind": "user", "id": "<user id>"}``) or the bootstrap
admin token (``{"kind": "admin_token"}``), which belongs to nobody. Events carry the wire form
(:meth:`Actor.to_wire`) in their ``data`` under ``"actor"``; the audit query filters on
:attr:`Actor.audit_id`.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

ActorKind = Literal["user", "admin_token"]

#: The id the audit log files the admin token's actions under (``actor_id=admin_token``).
ADMIN_TOKEN_ACTOR_ID = "admin_token"


class Actor(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The author of a change. ``id`` is set for users and only for users."""

    kind: ActorKind
    id: str | None = None

    @classmethod
    def user(cls, user_id: str) -> Actor:
        return cls(kind="user", id=user_id)

    @classmethod
    def admin_token(cls) -> Actor:
        return cls(kind="admin_token")

    @property
    def audit_id(self) -> str:
        """The id the audit query matches ``actor_id`` against."""
        return self.id if self.kind == "user" and self.id else ADMIN_TOKEN_ACTOR_ID

    def to_wire(self) -> dict[str, Any]:
        """The contract's form: ``{"kind":"user","id":…}`` or ``{"kind":"admin_token"}``."""
        if self.kind == "user":
            return {"kind": "user", "id": self.id}
        return {"kind": "admin_token"}
