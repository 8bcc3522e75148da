"""The Quart-Trio application: routes, schemas, errors, OpenAPI at /openapi.json."""

from __future__ import annotations

from collections.abc import Iterable

from quart import Blueprint
from quart_schema import QuartSchema
from quart_trio import QuartTrio

from lockerd.context import ServiceContext
from lockerd.http import admin_banks, ops
from lockerd.http.errors import install_error_handlers
from lockerd.http.server import BODY_READ_TIMEOUT

MAX_BODY_BYTES = 64 * 1024


def create_app(context: ServiceContext, extra: Iterable[Blueprint] = ()) -> QuartTrio:
    app = QuartTrio("lockerd")
    app.config["LOCKERD"] = context
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["BODY_TIMEOUT"] = BODY_READ_TIMEOUT  # an incomplete body: 408, then close
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the contract's field order
    QuartSchema(
        app,
        info={"title": "lockerd", "version": "0.1.0"},
        openapi_path="/openapi.json",
        swagger_ui_path=None,
        redoc_ui_path=None,
        scalar_ui_path=None,
        conversion_preference="msgspec",
    )
    install_error_handlers(app)
    for blueprint in (ops.blueprint, admin_banks.blueprint, *extra):
        app.register_blueprint(blueprint)
    return app
