"""Users, sessions, grants and the app routes (open a compartment, QR codes, transactions).

Installs the plain ``users`` and ``user_sessions`` tables, registers the session resolver as
``extensions["sessions"]`` (read by ``lockerd.http.auth``) and serves the admin and app routes.
The implementation lives in :mod:`lockerd.users`.
"""

from __future__ import annotations

import trio
from quart import Blueprint

from lockerd.context import ServiceContext
from lockerd.users import admin_routes, app_routes, tables
from lockerd.users.sessions import SessionService


async def install(context: ServiceContext, nursery: trio.Nursery) -> list[Blueprint]:
    await context.store.write(tables.create_tables)
    sessions = SessionService(context.store, context.keyring, context.clock)
    await sessions.hasher.prepare()
    context.extensions["sessions"] = sessions
    return [admin_routes.blueprint, app_routes.blueprint]
