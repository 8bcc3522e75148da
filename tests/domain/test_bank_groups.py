"""Group grants in the bank's decision: a member (the command's ``group_ids``) may open while
the group's grant is valid; grants and revocations name their actor; snapshots keep them."""

from __future__ import annotations

import json

import pytest

from domain import commands as c
from domain import events as e
from domain.actor import Actor
from domain.snapshot import decode_snapshot, encode_snapshot
from domain.state import BankState
from tests.domain._bank import (
    OTHER_USER,
    T0,
    TIMEOUT,
    apply,
    at,
    comp_id,
    decide,
    online_bank,
    secs,
)

T_ONLINE = T0 + secs(120)
GROUP = "group-1"
ADMIN = Actor.user("admin-1")


def open_as_member(now_offset: float, groups: frozenset[str]) -> c.RequestOpen:
    return c.RequestOpen(
        compartment_id=comp_id(1),
        user_id=OTHER_USER,
        transaction_id=f"tx-{now_offset}",
        command_timeout_seconds=TIMEOUT,
        group_ids=groups,
    )


def with_group_grant(expiry_after: float | None = None) -> BankState:
    expires_at = None if expiry_after is None else T_ONLINE + secs(expiry_after)
    command = c.GrantGroupAccess(
        compartment_id=comp_id(1), group_id=GROUP, expires_at=expires_at, actor=ADMIN
    )
    return apply(online_bank(numbers=()), at(command, T_ONLINE))


def kinds(events: list[e.Event]) -> list[type[e.Event]]:
    return [type(event) for event in events]


def test_a_member_opens_through_the_group_grant_and_a_non_member_does_not() -> None:
    state = with_group_grant()
    now = T_ONLINE + secs(1)
    member = decide(state, at(open_as_member(1, frozenset({GROUP, "other"})), now))
    assert kinds(member) == [e.CompartmentOpeningRequested]
    for groups in (frozenset(), frozenset({"other"})):
        denied = decide(state, at(open_as_member(1, groups), now))
        assert isinstance(denied[0], e.CompartmentOpeningDenied)
        assert denied[0].reason == "no_grant"


def test_an_expired_group_grant_no_longer_opens() -> None:
    state = with_group_grant(expiry_after=10)
    groups = frozenset({GROUP})
    ok = decide(state, at(open_as_member(9, groups), T_ONLINE + secs(9)))
    assert kinds(ok) == [e.CompartmentOpeningRequested]
    late = decide(state, at(open_as_member(10, groups), T_ONLINE + secs(10)))
    assert isinstance(late[0], e.CompartmentOpeningDenied)


def test_group_grants_name_their_actor_and_revoke_once() -> None:
    state = with_group_grant()
    revoke = c.RevokeGroupAccess(compartment_id=comp_id(1), group_id=GROUP, actor=ADMIN)
    events = decide(state, at(revoke, T_ONLINE + secs(1)))
    assert events == [
        e.CompartmentGroupAccessRevoked(
            compartment_id=comp_id(1), group_id=GROUP, revoked_at=T_ONLINE + secs(1), actor=ADMIN
        )
    ]
    assert e.event_data(events[0])["actor"] == {"kind": "user", "id": "admin-1"}
    revoked = apply(state, at(revoke, T_ONLINE + secs(1)))
    denied = decide(revoked, at(open_as_member(2, frozenset({GROUP})), T_ONLINE + secs(2)))
    assert isinstance(denied[0], e.CompartmentOpeningDenied)
    with pytest.raises(c.CommandRejected) as raised:
        decide(revoked, at(revoke, T_ONLINE + secs(3)))
    assert raised.value.code == "not_found"


def test_group_grant_rules() -> None:
    state = online_bank(numbers=())
    unknown = c.GrantGroupAccess(compartment_id="nope", group_id=GROUP, expires_at=None)
    with pytest.raises(c.CommandRejected) as raised:
        decide(state, at(unknown, T_ONLINE))
    assert raised.value.code == "not_found"
    past = c.GrantGroupAccess(compartment_id=comp_id(1), group_id=GROUP, expires_at=T_ONLINE)
    with pytest.raises(c.CommandRejected) as raised:
        decide(state, at(past, T_ONLINE))
    assert raised.value.code == "invalid"


def test_user_grants_carry_their_actor() -> None:
    grant = c.GrantAccess(compartment_id=comp_id(1), user_id=OTHER_USER, expires_at=None,
                          actor=Actor.admin_token())  # fmt: skip
    events = decide(online_bank(), at(grant, T_ONLINE))
    assert e.event_data(events[0])["actor"] == {"kind": "admin_token"}


def test_a_snapshot_keeps_group_grants() -> None:
    state = with_group_grant(expiry_after=60)
    restored = decode_snapshot(encode_snapshot(state))
    assert restored.group_grants == state.group_grants
    # a snapshot written before group grants existed still loads
    document = json.loads(encode_snapshot(online_bank()))
    del document["state"]["group_grants"]
    assert decode_snapshot(json.dumps(document).encode()).group_grants == {}
