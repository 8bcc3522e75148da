"""How /openapi.json documents every answer of every route.

The routes describe their answers with msgspec Structs through :func:`documented` (built on
``quart_schema.document_response``: documentation only, the handlers keep building their
answers themselves, nothing is validated or converted at run time). quart-schema 0.25 drops
the shared components of msgspec models (pgjones/quart-schema#117: a nested Struct's ``$ref``
points into an empty ``components.schemas``) and documents a list model as its item;
:class:`MsgspecOpenAPIProvider` generates every model's schema with
``msgspec.json.schema_components`` in one go instead, and also documents answers that are not a
JSON model (:class:`ResponseSpec`: no body, Prometheus text, HTML, CSV).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Annotated, Any, Final, TypeVar, cast, get_args, get_origin

import msgspec
from quart_schema import DataSource, OpenAPIProvider, document_response
from quart_schema.typing import Model
from quart_schema.validation import QUART_SCHEMA_REQUEST_ATTRIBUTE, QUART_SCHEMA_RESPONSE_ATTRIBUTE

from lockerd.http.errors import ErrorOut
from lockerd.http.validation import keeps_own_input_rules

IsoTime = Annotated[str, msgspec.Meta(description="ISO 8601 in UTC, e.g. 2026-03-01T12:00:00.000Z")]


@dataclass(frozen=True, slots=True, eq=False)
class ResponseSpec:
    """An answer that is not simply one msgspec model as JSON: ``content`` maps each media type
    to its model (JSON) or to None (a string: text, HTML, CSV); empty for no body at all."""

    description: str
    content: Mapping[str, object | None]


# what each error status means on any route; a route may say more (``documented``)
ERROR_MEANINGS: Final = {
    400: "Invalid input; the message says what is wrong (also: NUL or invalid UTF-8 anywhere,"
    " JSON nested deeper than 32 levels).",
    401: "No or bad credentials.",
    403: "Valid credentials, but not allowed.",
    404: "No such resource.",
    409: "State conflict (e.g. the locker bank is not online).",
    413: "Body too large.",
    415: "The body is not sent as `application/json` (optionally `charset=utf-8`).",
    429: "Too many attempts: retry after `retry_after` seconds.",
    503: "Temporarily unavailable: try again later.",
}

F = TypeVar("F", bound=Callable[..., Any])


def error_spec(status: int, description: str | None = None) -> ResponseSpec:
    return ResponseSpec(description or ERROR_MEANINGS[status], {"application/json": ErrorOut})


def documented(
    success: tuple[object, int] | int, *errors: int | tuple[int, str]
) -> Callable[[F], F]:
    """Document a route's answers in /openapi.json (documentation only).

    ``success`` is ``(model, status)`` (a msgspec Struct, ``list[Struct]`` or a
    :class:`ResponseSpec`) or a bare status for an answer without a body (204). Each error is a
    status answered with :class:`ErrorOut`, or ``(status, description)`` where the route's
    meaning is more specific than :data:`ERROR_MEANINGS`. Place it above the route's other
    decorators (below ``@blueprint.<method>``).

    A route with a JSON request body (``json_body`` or ``document_request`` below this
    decorator) also documents 400 and 415, which :func:`lockerd.http.validation.decode_body`
    answers on every such route, unless it keeps its own input rules (``own_input_rules``).
    """
    if isinstance(success, int):
        answers: list[tuple[object, int]] = [
            (ResponseSpec(HTTPStatus(success).phrase, {}), success)
        ]
    else:
        answers = [success]
    for error in errors:
        status, description = error if isinstance(error, tuple) else (error, None)
        answers.append((error_spec(status, description), status))

    def decorator(func: F) -> F:
        request = getattr(func, QUART_SCHEMA_REQUEST_ATTRIBUTE, None)
        if (
            request is not None
            and request[1] == DataSource.JSON
            and not keeps_own_input_rules(func)
        ):
            listed = {status for _, status in answers}
            answers.extend(
                (error_spec(status), status) for status in (400, 415) if status not in listed
            )
        for model, status in answers:
            func = document_response(cast(Model, model), status)(func)
        return func

    return decorator


# ------------------------------------------------------------------ documentation: generator

REF_TEMPLATE: Final = "#/components/schemas/{name}"


def _responses(func: Callable[..., Any]) -> Iterator[object]:
    for model, _headers in getattr(func, QUART_SCHEMA_RESPONSE_ATTRIBUTE, {}).values():
        if isinstance(model, ResponseSpec):
            yield from (m for m in model.content.values() if m is not None)
        else:
            yield model


def _description(model: object) -> str:
    """The model's docstring; for ``list[Struct]``, the item's."""
    if get_origin(model) is list:
        (item,) = get_args(model)
        return f"A list, each item: {_description(item)}"
    doc = getattr(model, "__doc__", None) if isinstance(model, type) else None
    return " ".join(doc.split()) if doc else ""


class MsgspecOpenAPIProvider(OpenAPIProvider):
    """quart-schema's OpenAPI generator with complete msgspec schemas (see the module doc).

    Request and response models are generated together, so ``components.schemas`` holds every
    Struct they use (name clashes between modules are resolved by msgspec) and each body is a
    ``$ref`` into it (or an array of them). Querystring models stay quart-schema's: they are flat.
    """

    _generated: dict[object, dict[str, Any]]

    def schema(self) -> dict[str, Any]:
        models: list[object] = []
        for rule in self.generate_rules():
            func = self._app.view_functions[rule.endpoint]
            request = getattr(func, QUART_SCHEMA_REQUEST_ATTRIBUTE, None)
            if request is not None:
                models.append(request[0])
            models.extend(_responses(func))
        models = list(dict.fromkeys(models))
        schemas, components = msgspec.json.schema_components(models, ref_template=REF_TEMPLATE)
        self._generated = dict(zip(models, schemas, strict=True))
        document = super().schema()
        document["components"]["schemas"].update(sorted(components.items()))
        return document

    def build_request_body(
        self, model: type[Model], source: DataSource
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        media = {
            DataSource.JSON: "application/json",
            DataSource.FORM_MULTIPART: "multipart/form-data",
        }.get(source, "application/x-www-form-urlencoded")
        body = {"required": True, "content": {media: {"schema": self._generated[model]}}}
        return body, {}

    def build_response_object(
        self, model: type[Model], headers_model: type[Model] | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        if headers_model is not None:
            raise TypeError("response header models are not documented here")
        if isinstance(model, ResponseSpec):
            response: dict[str, Any] = {"description": model.description}
            if model.content:
                response["content"] = {
                    media: {"schema": {"type": "string"} if m is None else self._generated[m]}
                    for media, m in model.content.items()
                }
            return response, {}
        schema = self._generated[model]
        return {
            "description": _description(model),
            "content": {"application/json": {"schema": schema}},
        }, {}
