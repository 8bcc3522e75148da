"""The Quart-Trio application: routes, schemas, errors, OpenAPI at /openapi.json."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from quart import Blueprint
from quart_schema import QuartSchema
from quart_trio import QuartTrio

from lockerd.http.errors import install_error_handlers
from lockerd.http.openapi import MsgspecOpenAPIProvider

if TYPE_CHECKING:
    from lockerd.wiring import Service
from lockerd.http.server import BODY_READ_TIMEOUT

MAX_BODY_BYTES = 64 * 1024


class LockerdApp(QuartTrio):
    """A Quart-Trio app that serves one :class:`~lockerd.wiring.Service`."""

    def __init__(self, service: Service) -> None:
        super().__init__("lockerd")
        self.service = service


def create_app(service: Service, blueprints: Iterable[Blueprint]) -> LockerdApp:
    app = LockerdApp(service)
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
        openapi_provider_class=MsgspecOpenAPIProvider,
    )
    install_error_handlers(app)
    for blueprint in blueprints:
        app.register_blueprint(blueprint)
    return app
