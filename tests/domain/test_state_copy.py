"""``domain.state.copy_with``: the slot copy is ``dataclasses.replace``, only cheaper."""

from __future__ import annotations

import dataclasses
import typing
from datetime import timedelta
from typing import Any

import pytest
from pyrsistent import pmap, pset

from domain.state import BankChanges, BankState, Compartment, Transaction, copy_with
from tests.domain._bank import T0, online_bank

_TX = Transaction(
    transaction_id="tx-1",
    action="open_compartment",
    status="pending",
    requested_at=T0,
    expires_at=T0 + timedelta(seconds=30),
    compartment_number=1,
    user_id="user-1",
)
_SAMPLES: list[Any] = [online_bank(), Compartment("comp-1", 1, 1, 0), _TX]


class _Marker:
    """A value no field holds, so that a change of any field is seen."""


@pytest.mark.parametrize("original", _SAMPLES, ids=lambda o: type(o).__name__)
def test_copy_with_equals_replace_for_every_field(original: Any) -> None:
    before = {f.name: getattr(original, f.name) for f in dataclasses.fields(original)}
    assert copy_with(original) == original
    assert copy_with(original) is not original
    for f in dataclasses.fields(original):
        value = _Marker()
        copied = copy_with(original, **{f.name: value})
        assert type(copied) is type(original)
        assert copied == dataclasses.replace(original, **{f.name: value})
        assert getattr(copied, f.name) is value
        for other in dataclasses.fields(original):
            if other.name != f.name:
                assert getattr(copied, other.name) is getattr(original, other.name)
    # the original is untouched
    assert {f.name: getattr(original, f.name) for f in dataclasses.fields(original)} == before


def test_copy_with_several_changes() -> None:
    state = online_bank()
    changes: dict[str, Any] = {"version": 99, "presence": "offline", "pending_ids": pset(["x"])}
    assert copy_with(state, **changes) == dataclasses.replace(state, **changes)


@pytest.mark.parametrize("original", _SAMPLES, ids=lambda o: type(o).__name__)
def test_copy_with_refuses_an_unknown_field(original: Any) -> None:
    with pytest.raises(TypeError, match="verison"):
        copy_with(original, verison=1)
    with pytest.raises(TypeError):  # the same as replace
        dataclasses.replace(original, verison=1)


def test_the_copy_stays_frozen() -> None:
    copied = copy_with(BankState(), version=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        copied.version = 2  # type: ignore[misc]
    assert copied.compartments == pmap()


def test_other_dataclasses_go_to_replace() -> None:
    @dataclasses.dataclass(frozen=True)
    class Other:
        a: int
        b: int = 0

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("a")

    assert copy_with(Other(1), b=2) == Other(1, 2)
    with pytest.raises(ValueError):  # __post_init__ ran, as in replace
        copy_with(Other(1), a=-1)


def test_bank_changes_are_the_bank_states_fields() -> None:
    """``BankChanges`` names every field of ``BankState`` with the same type."""
    fields = {f.name: f.type for f in dataclasses.fields(BankState)}
    hints = {
        name: getattr(hint, "__forward_arg__", hint)
        for name, hint in BankChanges.__annotations__.items()
    }
    assert hints == fields
    assert typing.get_type_hints(BankChanges) == typing.get_type_hints(BankState)
