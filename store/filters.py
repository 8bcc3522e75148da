"""Optional filters of a read-model query as one SQL ``WHERE`` clause.

Read routes take many optional filters (``?actor_id=&bank_id=&since=…``); each is a condition
with one ``?`` placeholder that applies only when its value is given. Both backends accept
``?`` placeholders (the PostgreSQL transaction translates them), so the clause is portable.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["where"]


def where(conditions: Iterable[tuple[str, object | None]]) -> tuple[str, list[object]]:
    """``(" WHERE c1 AND c2", [v1, v2])`` for the conditions whose value is not ``None``.

    Each condition is SQL text with exactly one ``?`` and the value bound to it; the text is
    never built from input, only the values are. No condition applies: ``("", [])``.
    """
    applied = [(sql, value) for sql, value in conditions if value is not None]
    if not applied:
        return "", []
    return " WHERE " + " AND ".join(sql for sql, _ in applied), [v for _, v in applied]
