"""Access to the running service from request handlers."""

from __future__ import annotations

from typing import cast

from quart import current_app

from lockerd.context import ServiceContext


def ctx() -> ServiceContext:
    return cast(ServiceContext, current_app.config["LOCKERD"])
