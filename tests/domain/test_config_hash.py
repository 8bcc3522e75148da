"""The apply_config hash exactly as contract §2 defines it.

Expected hashes are computed here from hand-written canonical JSON text, not from the module
under test: lowercase hex sha256 of the UTF-8 bytes of
``json.dumps({"compartments": [...], "heartbeat_interval_seconds": n}, sort_keys=True,
separators=(",", ":"))`` with compartments ``{"id", "slaveId", "address"}`` sorted by id.
"""

from __future__ import annotations

import hashlib
import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from domain import bank as b
from domain import commands as c
from domain import events as e
from domain.config_hash import config_compartments, config_hash
from domain.state import BankState
from tests.domain._bank import T0, at, create_command, decide, secs, spec


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# The seed document's example (two compartments on slave 1, interval 5), written out by hand:
# keys sorted at every level, no whitespace at all.
SEED_EXAMPLE_TEXT = (
    '{"compartments":[{"address":0,"id":1,"slaveId":1},{"address":1,"id":2,"slaveId":1}],'
    '"heartbeat_interval_seconds":5}'
)


def test_hash_of_the_seed_example_matches_the_contract_definition() -> None:
    compartments = [{"id": 1, "slaveId": 1, "address": 0}, {"id": 2, "slaveId": 1, "address": 1}]
    assert config_hash(compartments, 5) == sha256_hex(SEED_EXAMPLE_TEXT)


def test_hash_is_64_lowercase_hex_digits() -> None:
    digest = config_hash([{"id": 1, "slaveId": 1, "address": 0}], 10)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)


def test_hash_of_no_compartments() -> None:
    expected = sha256_hex('{"compartments":[],"heartbeat_interval_seconds":10}')
    assert config_hash([], 10) == expected


def test_hash_depends_on_the_heartbeat_interval() -> None:
    compartments = [{"id": 1, "slaveId": 1, "address": 0}]
    assert config_hash(compartments, 5) != config_hash(compartments, 6)
    assert config_hash(compartments, 6) == sha256_hex(
        '{"compartments":[{"address":0,"id":1,"slaveId":1}],"heartbeat_interval_seconds":6}'
    )


def test_config_compartments_uses_the_contract_key_names() -> None:
    assert config_compartments([(4, 2, 17)]) == [{"id": 4, "slaveId": 2, "address": 17}]
    assert list(config_compartments([(4, 2, 17)])[0]) == ["id", "slaveId", "address"]


def test_config_compartments_sorts_by_id_numerically() -> None:
    entries = [(10, 1, 9), (2, 3, 1), (1, 3, 0), (21, 1, 2)]
    assert [item["id"] for item in config_compartments(entries)] == [1, 2, 10, 21]


def test_hash_of_unsorted_bank_equals_hash_of_the_sorted_list() -> None:
    entries = [(10, 2, 5), (2, 1, 1), (1, 1, 0)]
    expected_text = (
        '{"compartments":[{"address":0,"id":1,"slaveId":1},{"address":1,"id":2,"slaveId":1},'
        '{"address":5,"id":10,"slaveId":2}],"heartbeat_interval_seconds":30}'
    )
    assert config_hash(config_compartments(entries), 30) == sha256_hex(expected_text)


def test_apply_config_command_of_a_bank_carries_the_contract_hash() -> None:
    specs = (spec(2, slave_id=1, address=1), spec(1, slave_id=1, address=0))
    state = b.fold(BankState(), decide(BankState(), create_command(specs=specs, interval=5)))
    events = decide(
        state,
        at(c.RequestApplyConfig(transaction_id="cfg-1", command_timeout_seconds=30), T0 + secs(1)),
    )
    request = events[0]
    assert isinstance(request, e.ConfigApplyRequested)
    assert request.config_hash == sha256_hex(SEED_EXAMPLE_TEXT)
    assert list(request.compartments) == [
        {"id": 1, "slaveId": 1, "address": 0},
        {"id": 2, "slaveId": 1, "address": 1},
    ]
    assert request.heartbeat_interval_seconds == 5
    # the state remembers what was asked for, to compare with the device's acknowledgement
    assert b.evolve(state, request).config_hash == sha256_hex(SEED_EXAMPLE_TEXT)


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.dictionaries(
        st.integers(1, 10_000),
        st.tuples(st.integers(0, 247), st.integers(0, 65_535)),
        max_size=12,
    ),
    st.integers(1, 3600),
)
def test_hash_matches_the_definition_for_any_configuration(
    by_number: dict[int, tuple[int, int]], interval: int
) -> None:
    entries = [(number, slave, address) for number, (slave, address) in by_number.items()]
    # built by hand: text pieces in sorted key order, compartments in ascending id order
    items = ",".join(
        f'{{"address":{address},"id":{number},"slaveId":{slave}}}'
        for number, slave, address in sorted(entries)
    )
    text = f'{{"compartments":[{items}],"heartbeat_interval_seconds":{interval}}}'
    assert config_hash(config_compartments(entries), interval) == sha256_hex(text)
    # and the text really is the contract's json.dumps form
    listing = [{"id": n, "slaveId": s, "address": a} for n, s, a in sorted(entries)]
    assert text == json.dumps(
        {"compartments": listing, "heartbeat_interval_seconds": interval},
        sort_keys=True,
        separators=(",", ":"),
    )
