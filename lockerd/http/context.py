"""Access to the running service from request handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from quart import current_app

if TYPE_CHECKING:
    from lockerd.http.app import LockerdApp
    from lockerd.wiring import Service


def ctx() -> Service:
    """The service the current request's application serves."""
    app = cast("LockerdApp", current_app)
    return app.service
