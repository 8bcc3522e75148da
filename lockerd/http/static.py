"""Static files of a package (pages, scripts, style sheets) as hardened responses."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources

from quart import Response

from lockerd.http.errors import ApiError


def static_response(
    package: str, files: Mapping[str, str], name: str, content_security_policy: str
) -> Response:
    """``name`` from ``<package>/static`` with its content type from ``files``.

    Only names listed in ``files`` are served (anything else: :class:`ApiError` 404), never
    cached without revalidation, never sniffed, under ``content_security_policy``.
    """
    if name not in files:
        raise ApiError(404, "no such file")
    body = resources.files(package).joinpath("static", name).read_bytes()
    response = Response(body, content_type=files[name])
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Content-Security-Policy"] = content_security_policy
    return response
