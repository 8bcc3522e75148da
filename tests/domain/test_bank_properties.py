"""Property tests: whatever order, duplication and timing of answers and Ticks the broker and the
timers produce, a command ends exactly once and the history can be stored and replayed.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from domain import bank as b
from domain import commands as c
from domain import events as e
from domain.snapshot import decode_snapshot, encode_snapshot
from domain.state import BankState
from tests.domain._bank import (
    T0,
    TIMEOUT,
    USER,
    Timed,
    answer,
    at,
    create_command,
    decide,
    heartbeat,
    open_cmd,
    secs,
)

TERMINAL = (e.CompartmentOpened, e.CommandFailed, e.CommandTimedOut, e.ConfigApplied)
TERMINAL_STATUS = ("success", "error", "timeout")

PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ---------------------------------------------------------------------------------------------
# the scenario


@dataclass(frozen=True)
class Answer:
    tx_index: int  # == number of transactions: an unknown transaction id
    result: str
    error_code: str | None
    right_action: bool


@dataclass(frozen=True)
class TickAt:
    pass


@dataclass(frozen=True)
class Beat:
    uptime: int


@dataclass(frozen=True)
class Step:
    delay_ms: int  # time passes first (``now`` is monotonic)
    op: Answer | TickAt | Beat


def steps(n: int) -> st.SearchStrategy[list[Step]]:
    answers = st.builds(
        Answer,
        tx_index=st.integers(0, n),
        result=st.sampled_from(["success", "error"]),
        error_code=st.sampled_from([None, "DOOR_JAMMED", "E42"]),
        right_action=st.sampled_from([True, True, True, False]),
    )
    ops = st.one_of(
        answers,
        answers,
        st.just(TickAt()),
        st.just(TickAt()),
        st.builds(Beat, st.integers(0, 10**6)),
    )
    delays = st.integers(0, 20_000) | st.sampled_from([0, 1, TIMEOUT * 1000 - 1, TIMEOUT * 1000])
    return st.lists(st.builds(Step, delays, ops), max_size=40)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[Step]]:
    n = draw(st.integers(1, 3))
    return n, draw(steps(n))


@dataclass
class Run:
    """Folds every decided event, recording the history as the store would keep it."""

    state: BankState = field(default_factory=BankState)
    history: list[e.Event] = field(default_factory=list)
    durable: int = 0

    def do(self, timed: Timed) -> list[e.Event]:
        events = decide(self.state, timed)
        for event in events:
            self.state = b.evolve(self.state, event)
            self.history.append(event)
            self.durable += e.is_durable(event)
        return events


T_START = T0 + secs(100)


def setup(n: int) -> tuple[Run, list[str], datetime]:
    """A bank online since T_START with USER granted on 1..n and one open pending on each."""
    run = Run()
    specs = tuple(
        e.CompartmentSpec(id=f"comp-{k}", number=k, slave_id=1, address=k) for k in range(1, n + 1)
    )
    run.do(create_command(specs=specs))
    run.do(
        at(
            c.Provision(
                token_hash="token-hash-1",
                client_id="dev",
                new_mqtt_user="u",
                new_credential_hash="h",
            ),
            T0 + secs(1),
        )
    )
    for k in range(1, n + 1):
        run.do(
            at(
                c.GrantAccess(compartment_id=f"comp-{k}", user_id=USER, expires_at=None),
                T0 + secs(2),
            )
        )
    run.do(heartbeat(T_START, uptime=10))
    txs = []
    for k in range(1, n + 1):
        tx = f"tx-{k}"
        events = run.do(open_cmd(T_START, number=k, tx=tx))
        assert [type(ev) for ev in events] == [e.CompartmentOpeningRequested]
        txs.append(tx)
    return run, txs, T_START


def play(n: int, plan: list[Step], check: object = None) -> tuple[Run, list[str]]:
    run, txs, now = setup(n)
    for item in plan:
        now = now + timedelta(milliseconds=item.delay_ms)
        op = item.op
        if isinstance(op, Answer):
            tx = txs[op.tx_index] if op.tx_index < n else "tx-unknown"
            action = "open_compartment" if op.right_action else "apply_config"
            command: Timed = answer(
                tx, now, result=op.result, error_code=op.error_code, action=action
            )
        elif isinstance(op, TickAt):
            command = at(c.Tick(), now)
        else:
            # a fresh spare id each time, as the shell generates them: the bank may use it for
            # the apply_config it pushes when it comes online again (contract §2)
            command = heartbeat(now, uptime=op.uptime, spare=f"spare-{len(run.state.transactions)}")
        before = run.state
        try:
            run.do(command)
        except c.CommandRejected as exc:
            assert isinstance(op, Answer)
            expected = "unknown_transaction" if op.tx_index >= n else "invalid"
            assert exc.code == expected
            assert run.state is before  # a rejected command changes nothing
            continue
        if callable(check):
            check(before, run.state, now)
    return run, txs


# ---------------------------------------------------------------------------------------------
# properties


def tx_of(event: e.Event) -> str | None:
    return getattr(event, "transaction_id", None)


def _late(tx_index: int, result: str = "success") -> Step:
    return Step(1, Answer(tx_index, result, "E42" if result == "error" else None, True))


@PROPERTY_SETTINGS
@given(scenarios())
@example((1, [Step(TIMEOUT * 1000, TickAt()), _late(0), _late(0, "error"), _late(0)]))
@example(
    (
        2,
        [
            Step(1000, Answer(1, "error", "E42", True)),
            Step(TIMEOUT * 1000, TickAt()),
            _late(0, "error"),
            _late(1),
            _late(0),
            Step(0, TickAt()),
        ],
    )
)
def test_each_transaction_ends_exactly_once_whatever_the_answers_and_ticks(
    scenario: tuple[int, list[Step]],
) -> None:
    n, plan = scenario

    def statuses_never_leave_a_terminal_state(
        before: BankState, after: BankState, _: datetime
    ) -> None:
        for tx_id, tx in before.transactions.items():
            if tx.status in TERMINAL_STATUS:
                assert after.transactions[tx_id].status == tx.status

    run, txs = play(n, plan, statuses_never_leave_a_terminal_state)

    terminal: dict[str, type[e.Event]] = {}
    late: dict[str, int] = {}
    for event in run.history:
        tx = tx_of(event)
        if isinstance(event, TERMINAL):
            assert tx is not None
            assert tx not in terminal, f"second terminal event {event!r} after {terminal[tx]}"
            assert late.get(tx, 0) == 0
            terminal[tx] = type(event)
        elif isinstance(event, e.LateAnswerReceived):
            assert tx is not None
            assert terminal.get(tx) is e.CommandTimedOut, "late answer without a timeout"
            late[tx] = late.get(tx, 0) + 1
            assert late[tx] == 1, "second late answer"

    for tx in txs:
        status = run.state.transactions[tx].status
        if tx in terminal:
            expected = {
                e.CompartmentOpened: "success",
                e.CommandFailed: "error",
                e.CommandTimedOut: "timeout",
            }[terminal[tx]]
            assert status == expected
            assert run.state.transactions[tx].has_late_answer == (late.get(tx, 0) == 1)
        else:
            assert status == "pending"

    assert run.state.version == run.durable


@PROPERTY_SETTINGS
@given(scenarios())
def test_a_command_times_out_at_its_expiry_and_not_before(
    scenario: tuple[int, list[Step]],
) -> None:
    n, plan = scenario

    def timeouts_only_when_due(before: BankState, after: BankState, now: datetime) -> None:
        for tx_id, tx in after.transactions.items():
            old = before.transactions.get(tx_id)  # None: a push of the bank coming online
            if old is not None and old.status == "pending" and tx.status == "timeout":
                assert now >= old.expires_at

    play(n, plan, timeouts_only_when_due)


@PROPERTY_SETTINGS
@given(scenarios())
@example((1, [Step(TIMEOUT * 1000 + 1, Answer(0, "success", None, right_action=True))]))
def test_success_or_error_only_for_answers_received_before_expiry(
    scenario: tuple[int, list[Step]],
) -> None:
    """Contract §2: ``timeout`` means no answer before ``expires_at``; an answer after it is a
    late answer, independent of when the timer's Tick is processed."""
    n, plan = scenario
    run, _ = play(n, plan)
    for event in run.history:
        if isinstance(event, e.CompartmentOpened | e.CommandFailed):
            tx = run.state.transactions[event.transaction_id]
            assert event.received_at < tx.expires_at, (
                f"{type(event).__name__} received {event.received_at} after expiry {tx.expires_at}"
            )


def stored(event: e.Event) -> e.Event:
    """Through the store: type name + JSON data, as text, and back."""
    data = json.loads(json.dumps(e.event_data(event)))
    return e.event_from_stored(e.event_type(event), data)


def live_fields_cleared(state: BankState) -> BankState:
    return replace(state, presence="unknown", last_seen=None, session_id=None, uptime_seconds=None)


@PROPERTY_SETTINGS
@given(scenarios())
def test_history_round_trips_through_the_store_and_replays_to_the_same_state(
    scenario: tuple[int, list[Step]],
) -> None:
    n, plan = scenario
    run, _ = play(n, plan)
    for event in run.history:
        assert stored(event) == event
        assert type(stored(event)) is type(event)
    durable = [stored(ev) for ev in run.history if e.is_durable(ev)]
    rebuilt = b.fold(BankState(), durable)
    assert rebuilt.version == run.state.version == len(durable)
    assert live_fields_cleared(rebuilt) == live_fields_cleared(run.state)
    # a snapshot keeps everything but live presence, which starts "unknown" again
    assert decode_snapshot(encode_snapshot(run.state)) == live_fields_cleared(run.state)


# ---------------------------------------------------------------------------------------------
# every event type, generated directly, survives the store

_text = st.text(min_size=0, max_size=12)
_times = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.just(T0.tzinfo),  # type: ignore[arg-type]
)
_json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _text
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)


def _strategy_for(cls: type[e.Event]) -> st.SearchStrategy[e.Event]:
    """Every field drawn explicitly: datetimes aware (UTC), free-form data JSON-like."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, st.SearchStrategy[object]] = {}
    for name in cls.__struct_fields__:
        hint = hints[name]
        if hint is datetime:
            fields[name] = _times
        elif hint == datetime | None:
            fields[name] = st.none() | _times
        elif name == "data":
            fields[name] = st.dictionaries(_text, _json, max_size=4)
        elif cls is e.LockerBankCreated and name == "compartments":
            fields[name] = st.lists(
                st.builds(
                    e.CompartmentSpec,
                    id=_text,
                    number=st.integers(1, 99),
                    slave_id=st.integers(0, 247),
                    address=st.integers(0, 65535),
                ),
                max_size=3,
            ).map(tuple)
        elif cls is e.ConfigApplyRequested and name == "compartments":
            fields[name] = st.lists(
                st.fixed_dictionaries(
                    {
                        "id": st.integers(1, 99),
                        "slaveId": st.integers(0, 247),
                        "address": st.integers(0, 65535),
                    }
                ),
                max_size=3,
            ).map(tuple)
        else:
            fields[name] = st.from_type(hint)
    return st.builds(cls, **fields)


ALL_EVENT_TYPES: tuple[type[e.Event], ...] = e.AnyEvent.__args__  # type: ignore[attr-defined]


@PROPERTY_SETTINGS
@given(st.sampled_from(ALL_EVENT_TYPES).flatmap(_strategy_for))
def test_every_event_type_round_trips_through_event_data(event: e.Event) -> None:
    data = e.event_data(event)
    assert "type" not in data
    text = json.dumps(data)  # JSON-ready (tuples are written as arrays)
    assert e.event_from_stored(e.event_type(event), json.loads(text)) == event
    assert e.event_from_stored(e.event_type(event), data) == event
    assert stored(event) == event
