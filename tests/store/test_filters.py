"""``store.filters.where``: only the given filters apply, in order, with their values bound."""

from __future__ import annotations

from store.filters import where


def test_no_filter_given_is_no_clause() -> None:
    assert where([("a = ?", None), ("b = ?", None)]) == ("", [])


def test_given_filters_join_with_and_in_order_with_their_values() -> None:
    clause, params = where([("a = ?", 1), ("b = ?", None), ("c >= ?", "x")])
    assert clause == " WHERE a = ? AND c >= ?"
    assert params == [1, "x"]


def test_falsy_values_still_filter() -> None:
    # 0 and "" are values a caller asked for; only None means "not given".
    assert where([("n = ?", 0), ("s = ?", "")]) == (" WHERE n = ? AND s = ?", [0, ""])
