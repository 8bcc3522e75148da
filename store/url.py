"""Parsing of ``LOCKERD_DATABASE_URL``-style strings into a backend choice.

Kept apart from the backends so it stays a pure function: it never touches the file system or
the network, which makes it trivial to unit test and lets configuration errors surface at start-up
with a message that names the problem rather than a late ``sqlite3``/``psycopg`` error.

Accepted forms:

* ``sqlite:///relative/path.db`` - path relative to the process's working directory (it is kept
  relative here; ``sqlite3`` resolves it when the store is opened).
* ``sqlite:////absolute/path.db`` - absolute path (the fourth slash is the root).
* ``postgresql://...`` and ``postgres://...`` (both spellings libpq accepts) - handed on verbatim.

Error messages name the scheme or the offending part but never echo the whole URL, because a
PostgreSQL URL may carry a password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

DatabaseKind = Literal["sqlite", "postgresql"]

_POSTGRES_SCHEMES = frozenset({"postgresql", "postgres"})


@dataclass(frozen=True, slots=True)
class DatabaseUrl:
    """A parsed database URL.

    ``path`` is the SQLite file path (percent-decoded, relative paths kept relative) and ``None``
    for PostgreSQL, whose URL libpq parses itself. ``url`` is the raw string; it is left out of
    ``repr`` so that logging a ``DatabaseUrl`` cannot leak a password.
    """

    kind: DatabaseKind
    path: str | None
    url: str = field(repr=False)


def parse_database_url(url: str) -> DatabaseUrl:
    """Classify ``url`` and extract what the backend needs; raise ``ValueError`` if unusable."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("database URL is empty")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if not scheme:
        raise ValueError(
            "database URL has no scheme; expected sqlite:///path.db, sqlite:////abs/path.db "
            "or postgresql://..."
        )
    if scheme in _POSTGRES_SCHEMES:
        return DatabaseUrl(kind="postgresql", path=None, url=url)
    if scheme != "sqlite":
        raise ValueError(
            f"unsupported database URL scheme {scheme!r}; expected 'sqlite' or 'postgresql'"
        )
    if not url[len("sqlite:") :].startswith("//"):
        raise ValueError("sqlite URL must start with 'sqlite:///' (e.g. sqlite:///lockerd.db)")
    if parts.netloc:
        raise ValueError(
            f"sqlite URL must not name a host (got {parts.netloc!r}); use sqlite:///relative.db "
            "or sqlite:////absolute/path.db"
        )
    if parts.query or parts.fragment:
        raise ValueError("sqlite URL must not have a query string or fragment")
    # urlsplit keeps the slash that separates the (empty) authority from the path:
    # "sqlite:///a.db" -> "/a.db", "sqlite:////abs/a.db" -> "//abs/a.db". Drop exactly that one.
    raw_path = parts.path[1:] if parts.path.startswith("/") else parts.path
    path = unquote(raw_path)
    if not path or path.endswith("/"):
        raise ValueError("sqlite URL names no database file")
    if path == ":memory:" or path.startswith("file:"):
        raise ValueError(
            "sqlite URL must name a database file; in-memory and URI databases are not supported "
            "(the event store must survive a restart)"
        )
    if "\x00" in path:
        raise ValueError("sqlite URL path contains a NUL character")
    return DatabaseUrl(kind="sqlite", path=path, url=url)
