"""Strict request-body validation that also documents the body in /openapi.json.

quart-schema converts msgspec models in lax mode (``"1"`` becomes ``1``), which would let
wrongly typed input through. ``json_body`` decodes the raw body strictly with msgspec, answers
400 with msgspec's message (it names the offending field), and registers the model with
quart-schema exactly as ``validate_request`` does, so the OpenAPI description stays generated.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar

import msgspec
from quart import request
from quart_schema.validation import QUART_SCHEMA_REQUEST_ATTRIBUTE, DataSource

from lockerd.http.errors import ApiError

M = TypeVar("M")
Handler = Callable[..., Awaitable[Any]]


def decode_body(model: type[M], raw: bytes) -> M:
    if not raw.strip():
        raise ApiError(400, "request body is empty: a JSON object is required")
    try:
        return msgspec.json.decode(raw, type=model, strict=True)
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None


def json_body(model: type[Any]) -> Callable[[Handler], Handler]:
    """Decorator: the handler receives the decoded body as ``data``."""

    def decorator(func: Handler) -> Handler:
        setattr(func, QUART_SCHEMA_REQUEST_ATTRIBUTE, (model, DataSource.JSON))

        @wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            raw = await request.get_data(cache=True)
            data = decode_body(model, raw if isinstance(raw, bytes) else raw.encode())
            return await func(*args, data=data, **kwargs)

        return wrapper

    return decorator
