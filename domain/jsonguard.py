"""What every JSON document lockerd accepts must satisfy, whichever way it came in.

A value the stores cannot hold, or a document that costs a parser unbounded recursion, must
be refused at the boundary, once, before anything is decoded into a command (contract §2 and
§4): invalid UTF-8 anywhere (skipped unknown fields included), a string containing NUL
(U+0000, which PostgreSQL text cannot hold), or nesting deeper than :data:`MAX_DEPTH`.

Both checks are cheap on the common path: the nesting scan runs only when the document has
more brackets than the limit, and the NUL walk only when the raw bytes contain ``\\u0000``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgspec

MAX_DEPTH: Final = 32
_NUL_ESCAPE: Final = b"\\u0000"
_OPENERS: Final = frozenset(b"[{")
_CLOSERS: Final = frozenset(b"]}")
_QUOTE: Final = ord('"')
_BACKSLASH: Final = ord("\\")


class UnsafeJson(ValueError):
    """The document breaks one of the rules above; the message says which."""


def check_raw(document: bytes) -> None:
    """Refuse invalid UTF-8 and nesting deeper than :data:`MAX_DEPTH`, before parsing."""
    try:
        document.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeJson("not valid UTF-8") from None
    if document.count(b"{") + document.count(b"[") > MAX_DEPTH and _too_deep(document):
        raise UnsafeJson(f"JSON nested deeper than {MAX_DEPTH} levels")


def may_contain_nul(document: bytes) -> bool:
    """Whether a parsed value of ``document`` could hold a NUL (cheap pre-filter)."""
    return _NUL_ESCAPE in document


def check_no_nul(value: Any) -> None:
    """Refuse a parsed value with a NUL in any string (a key or a value, at any depth)."""
    if _has_nul(value):
        raise UnsafeJson("a string contains NUL (U+0000)")


def check(document: bytes) -> None:
    """Every rule, for a raw JSON document (unknown, skipped fields included).

    Malformed JSON is left to the caller's typed decoder, which says what is wrong with it.
    """
    check_raw(document)
    if may_contain_nul(document):
        try:
            value = msgspec.json.decode(document)
        except msgspec.DecodeError:
            return
        check_no_nul(value)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(item) for item in value)
    fields: Iterable[str] | None = getattr(value, "__struct_fields__", None)
    if fields is not None:  # a msgspec Struct
        return any(_has_nul(getattr(value, name)) for name in fields)
    return False


def _too_deep(document: bytes) -> bool:
    depth = 0
    in_string = False
    escaped = False
    for byte in document:
        if in_string:
            if escaped:
                escaped = False
            elif byte == _BACKSLASH:
                escaped = True
            elif byte == _QUOTE:
                in_string = False
        elif byte == _QUOTE:
            in_string = True
        elif byte in _OPENERS:
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif byte in _CLOSERS:
            depth -= 1
    return False
