"""Capabilities that plug into the running core.

Each feature module exposes ``async def install(context, nursery) -> list[Blueprint]``: it may
start its own actors in ``nursery``, put shared services into ``context.extensions`` and return
the HTTP blueprints it serves. They are installed in this order, before the gateway starts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib import import_module

import trio
from quart import Blueprint

from lockerd.context import ServiceContext

FEATURES = ("users", "metrics_ingest", "mosq", "dashboard")

Install = Callable[[ServiceContext, trio.Nursery], Awaitable[list[Blueprint]]]


def installers() -> list[Install]:
    return [import_module(f"lockerd.features.{name}").install for name in FEATURES]
