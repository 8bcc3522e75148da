"""Not implemented yet."""

from __future__ import annotations

import trio
from quart import Blueprint

from lockerd.context import ServiceContext


async def install(context: ServiceContext, nursery: trio.Nursery) -> list[Blueprint]:
    return []
