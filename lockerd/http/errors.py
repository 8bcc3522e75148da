"""Contract-shaped errors: ``{"error": "<code>", "message": "<human text>"}``.

Every failure a client can cause maps to a 4xx with a clear message; an unexpected exception is
logged and answered with a 500 that reveals nothing, and is a bug to fix. :class:`ErrorOut`
documents the body in /openapi.json (see :mod:`lockerd.http.openapi`).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import structlog
from quart import Quart, Response, jsonify
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import HTTPException

log = structlog.get_logger("lockerd.http")

STATUS_CODES = {
    400: "invalid_input",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or STATUS_CODES.get(status, "error")
        self.message = message
        self.extra = extra


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    response = jsonify({"error": code, "message": message, **extra})
    response.status_code = status
    return response


def _describe_validation(error: RequestSchemaValidationError) -> str:
    cause = error.validation_error
    text = str(cause) if cause is not None else "request body does not match the schema"
    return f"invalid request body: {text}"


def install_error_handlers(app: Quart) -> None:
    """Answer every failure as :class:`ErrorOut`."""

    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        return error_response(error.status, error.code, error.message, **error.extra)

    @app.errorhandler(RequestSchemaValidationError)
    async def validation_error(error: RequestSchemaValidationError) -> Response:
        return error_response(400, "invalid_input", _describe_validation(error))

    @app.errorhandler(UnicodeDecodeError)
    async def undecodable_body(error: UnicodeDecodeError) -> Response:
        # quart decodes the body before parsing JSON, outside its own bad-JSON handling
        return error_response(400, "invalid_input", "request body is not valid UTF-8")

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = STATUS_CODES.get(status, "error")
        return error_response(status, code, error.description or code)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.error("unhandled_exception", exc_info=error)
        return error_response(500, "internal_error", "internal error")


class ErrorOut(msgspec.Struct):
    """A contract-shaped error."""

    error: Annotated[
        str, msgspec.Meta(description="machine code: invalid_input, unauthorized, not_found, …")
    ]
    message: Annotated[str, msgspec.Meta(description="human-readable text")]
    retry_after: (
        Annotated[int, msgspec.Meta(description="seconds until trying again may succeed (429)")]
        | msgspec.UnsetType
    ) = msgspec.UNSET
    reason: (
        Annotated[
            str,
            msgspec.Meta(
                description="why a locker bank refused an open: no_grant, offline,"
                " command_pending, …"
            ),
        ]
        | msgspec.UnsetType
    ) = msgspec.UNSET
