"""The HTTP boundary: what a request must be before any handler, actor or store sees it.

Every JSON body goes through :func:`decode_body`, once, whichever route it is for:

* a body must be declared ``application/json`` (``charset=utf-8`` allowed, nothing else):
  anything else is a 415 ``unsupported_media_type`` (contract §4);
* it must pass :mod:`domain.jsonguard`, the rules the MQTT boundary applies too: valid UTF-8, no
  NUL (U+0000, which PostgreSQL text cannot hold) in any string, at most 32 levels of nesting,
  each a 400 with a message that says which rule;
* then it is decoded strictly with msgspec into the route's model (quart-schema converts msgspec
  models in lax mode, ``"1"`` becoming ``1``, which would let wrongly typed input through); a
  mismatch is a 400 with msgspec's message, which names the offending field.

:func:`json_body` registers the model with quart-schema exactly as ``validate_request`` does,
so the OpenAPI description stays generated. :func:`install_request_guards` adds what holds for
every route: a query string with NUL or invalid UTF-8 is a 400 before the handler runs (path
parameters are ids, and :func:`lockerd.http.ids.parse_id` answers 404 for anything that is not
one). Routes that must answer malformed input in their own way (go-auth's ``/api/mosq/*``:
JSON or form bodies, and a deny rather than an error for anything malformed, contract §3) are
marked with :func:`own_input_rules` and left alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, Final, TypeVar
from urllib.parse import unquote_to_bytes

import msgspec
from quart import Quart, current_app, has_request_context, request
from quart_schema.validation import QUART_SCHEMA_REQUEST_ATTRIBUTE, DataSource
from werkzeug.http import parse_options_header

from domain import jsonguard
from lockerd.http.errors import ApiError

M = TypeVar("M")
F = TypeVar("F", bound=Callable[..., Any])
Handler = Callable[..., Awaitable[Any]]

JSON_MEDIA_TYPE: Final = "application/json"
_UTF8_CHARSETS: Final = frozenset({"utf-8", "utf8"})
_OWN_RULES_ATTRIBUTE: Final = "_lockerd_own_input_rules"


def json_media_type(content_type: str | None) -> bool:
    """Whether a Content-Type header declares JSON as the contract accepts it.

    ``application/json`` in any case, optionally with ``charset=utf-8`` (JSON is UTF-8, RFC
    8259 §8.1); another charset, another type (``text/plain``, form encoding,
    ``application/merge-patch+json``) or no header at all is not.
    """
    if not content_type:
        return False
    media_type, options = parse_options_header(content_type)
    if media_type.lower() != JSON_MEDIA_TYPE:
        return False
    charset = options.get("charset")
    return charset is None or charset.lower() in _UTF8_CHARSETS


def require_json_media_type(body: bytes) -> None:
    """415 unless the current request declares its body as JSON.

    An empty body without a Content-Type is left to the decoder (which says the body is empty);
    an empty body declared as something else is a 415 all the same.
    """
    content_type = request.headers.get("Content-Type")
    if content_type is None and not body:
        return
    if not json_media_type(content_type):
        declared = "no Content-Type" if content_type is None else repr(content_type[:100])
        raise ApiError(
            415,
            f"the request body must be sent as {JSON_MEDIA_TYPE} (got {declared})",
        )


def check_document(raw: bytes) -> None:
    """400 for a document that breaks :mod:`domain.jsonguard` (UTF-8, NUL, depth)."""
    try:
        jsonguard.check(raw)
    except jsonguard.UnsafeJson as exc:
        raise ApiError(400, f"invalid request body: {exc}") from None


def decode_body(model: type[M], raw: bytes) -> M:
    """The request body as ``model``, or an :class:`ApiError` (415, then 400) saying why not.

    Inside a request it first checks the Content-Type (:func:`require_json_media_type`); then
    the body must not be empty, must pass :func:`check_document` and decode strictly as
    ``model``. Raises nothing else for any input.
    """
    if has_request_context():
        require_json_media_type(raw)
    if not raw.strip():
        raise ApiError(400, "request body is empty: a JSON object is required")
    check_document(raw)
    try:
        return msgspec.json.decode(raw, type=model, strict=True)
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None


async def request_body() -> bytes:
    """The current request's raw body (read once, cached for later readers)."""
    raw = await request.get_data(cache=True)
    return raw if isinstance(raw, bytes) else raw.encode()


def json_body(model: type[Any]) -> Callable[[Handler], Handler]:
    """Decorator: the handler receives the decoded body as ``data`` (see :func:`decode_body`)."""

    def decorator(func: Handler) -> Handler:
        setattr(func, QUART_SCHEMA_REQUEST_ATTRIBUTE, (model, DataSource.JSON))

        @wraps(func)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            data = decode_body(model, await request_body())
            return await func(*args, data=data, **kwargs)

        return wrapper

    return decorator


def own_input_rules(func: F) -> F:
    """Mark a view that answers malformed input itself (the guards here leave it alone)."""
    setattr(func, _OWN_RULES_ATTRIBUTE, True)
    return func


def keeps_own_input_rules(func: Callable[..., Any]) -> bool:
    return bool(getattr(func, _OWN_RULES_ATTRIBUTE, False))


def unsafe_query_reason(query_string: bytes) -> str | None:
    """Why a raw (percent-encoded) query string is refused, or None when it is fine."""
    if not query_string:
        return None
    decoded = unquote_to_bytes(query_string.replace(b"+", b" "))
    if b"\x00" in decoded:
        return "the query string contains NUL (U+0000)"
    try:
        decoded.decode("utf-8")
    except UnicodeDecodeError:
        return "the query string is not valid UTF-8"
    return None


def install_request_guards(app: Quart) -> None:
    """Refuse, before any handler runs, what no route of this API can accept (see module doc)."""

    @app.before_request
    async def refuse_unsafe_query() -> None:
        if request.routing_exception is not None or request.url_rule is None:
            return  # a 404 or 405 answers that anyway
        view = current_app.view_functions.get(request.url_rule.endpoint)
        if view is not None and keeps_own_input_rules(view):
            return
        reason = unsafe_query_reason(request.query_string)
        if reason is not None:
            raise ApiError(400, reason)
