"""In-memory fakes of the ports that the actors (``actors.ports``) and the router
(``gateway.router``) declare, so that their logic is tested at unit speed: no broker, no
database, no HTTP.

Every fake records what was done to it in plain public attributes (lists, counters) that tests
assert on, and offers ``await fake.wait_until(predicate)`` so that a test waits for something
to have happened instead of sleeping. Failures are injected explicitly (``fail_next_appends``,
``fail_next``, ``block``); a fake never fails on its own.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NoReturn, cast

import trio

from domain import commands as c
from domain import events as e
from domain.outbound import DeviceCommand, DeviceMessage
from domain.records import ConcurrencyError, NewEvent, Snapshot, StoredEvent
from gateway.mqtt import MqttClient

EPOCH = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


class _Changes:
    """Wakes every waiter whenever the owning fake records something."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return as soon as ``predicate()`` holds; re-checked after every change."""
        while not predicate():
            await self._event.wait()


# ---------------------------------------------------------------------------------------------
# clocks


class FakeClock:
    """A wall clock (``Callable[[], datetime]``) that says what the test wants.

    ``now`` is a mutable, timezone-aware ``datetime``; ``advance()`` and ``set()`` move it.
    With ``follow_trio=True`` the clock also moves with Trio's clock (elapsed Trio time since
    construction, or since the first call when built outside Trio), so that under a
    ``MockClock`` (``autojump_clock``) the actors' wall time and the Trio deadlines of the timer
    actor and the dispatcher agree. Never goes backwards unless ``set()`` is told to.
    """

    def __init__(self, start: datetime = EPOCH, *, follow_trio: bool = False) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start")
        self.now = start
        self.follow_trio = follow_trio
        self._trio_base: float | None = None
        if follow_trio:
            try:
                self._trio_base = trio.current_time()
            except RuntimeError:  # built outside trio.run: start counting at the first call
                self._trio_base = None

    def __call__(self) -> datetime:
        if not self.follow_trio:
            return self.now
        if self._trio_base is None:
            self._trio_base = trio.current_time()
        return self.now + timedelta(seconds=trio.current_time() - self._trio_base)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def set(self, moment: datetime) -> None:
        """Make the clock say ``moment`` now (also while following Trio)."""
        self.now += moment - self()


class FakeMonotonic:
    """A monotonic clock (``Callable[[], float]``, seconds) that moves only by ``advance()``.

    For the router's rate limiter (``Gateway(clock=...)``).
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock never goes backwards")
        self.now += seconds


# ---------------------------------------------------------------------------------------------
# actors' ports


class InjectedStoreFailure(Exception):
    """The failure ``MemoryEventLog.fail_next_appends`` makes an append raise."""


@dataclass(frozen=True, slots=True)
class _AppendFailure:
    error: type[Exception]
    after_commit: bool


class MemoryEventLog:
    """Satisfies :class:`actors.ports.EventLog` with lists in memory.

    Promises, as the real store does:

    * ``append`` is atomic and optimistic: it raises :class:`~domain.records.ConcurrencyError`
      unless the stream is exactly at ``expected_version``, and then stores nothing;
    * versions are 1-based and consecutive per stream, positions strictly increasing across
      all streams; ``data`` is stored as its JSON round trip (a copy: later mutation of the
      caller's dict changes nothing, and anything not JSON-ready fails like a real store);
    * ``read_stream(stream, after_version)`` returns the events after that version, in order;
    * one snapshot per stream, the last one saved wins.

    ``fail_next_appends(n)`` makes the next ``n`` appends raise
    :class:`InjectedStoreFailure` (or ``error``): before storing anything, or with
    ``after_commit=True`` after storing (a store that committed but lost the answer).
    ``reads`` records every ``read_stream`` call as ``(stream_id, after_version)``;
    ``append_calls`` counts appends, failed ones included; ``appended`` holds the event types
    of each successful append, in order. ``hold_appends()`` makes appends wait (counted in
    ``appends_waiting``) until ``release_appends()``, to let messages queue up behind one.
    """

    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        self.streams: dict[str, list[StoredEvent]] = {}
        self.snapshots: dict[str, Snapshot] = {}
        self.reads: list[tuple[str, int]] = []
        self.append_calls = 0
        self.appended: list[list[str]] = []
        self.appends_waiting = 0
        self._gate: trio.Event | None = None
        self._clock = clock or (lambda: datetime.now(UTC))
        self._position = 0
        self._failures: deque[_AppendFailure] = deque()
        self._changes = _Changes()

    def fail_next_appends(
        self,
        count: int = 1,
        *,
        after_commit: bool = False,
        error: type[Exception] = InjectedStoreFailure,
    ) -> None:
        self._failures.extend(_AppendFailure(error, after_commit) for _ in range(count))

    @property
    def pending_failures(self) -> int:
        return len(self._failures)

    def hold_appends(self) -> None:
        self._gate = trio.Event()

    def release_appends(self) -> None:
        if self._gate is not None:
            self._gate.set()
        self._gate = None

    async def append(
        self, stream_id: str, expected_version: int, events: Sequence[NewEvent]
    ) -> list[StoredEvent]:
        await trio.lowlevel.checkpoint()
        while self._gate is not None:
            self.appends_waiting += 1
            self._changes.notify()
            try:
                await self._gate.wait()
            finally:
                self.appends_waiting -= 1
        self.append_calls += 1
        failure = self._failures.popleft() if self._failures else None
        if failure is not None and not failure.after_commit:
            raise failure.error(f"injected append failure on {stream_id}")
        stream = self.streams.setdefault(stream_id, [])
        if expected_version != len(stream):
            raise ConcurrencyError(stream_id, expected_version, len(stream))
        recorded_at = self._clock()
        stored: list[StoredEvent] = []
        for offset, event in enumerate(events, start=1):
            self._position += 1
            stored.append(
                StoredEvent(
                    position=self._position,
                    stream_id=stream_id,
                    version=expected_version + offset,
                    type=event.type,
                    data=json.loads(json.dumps(dict(event.data))),
                    recorded_at=recorded_at,
                )
            )
        stream.extend(stored)
        self.appended.append([event.type for event in events])
        self._changes.notify()
        if failure is not None:
            raise failure.error(f"injected failure after committing to {stream_id}")
        return list(stored)

    async def read_stream(self, stream_id: str, after_version: int = 0) -> list[StoredEvent]:
        await trio.lowlevel.checkpoint()
        self.reads.append((stream_id, after_version))
        return [ev for ev in self.streams.get(stream_id, []) if ev.version > after_version]

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        await trio.lowlevel.checkpoint()
        self.snapshots[snapshot.stream_id] = snapshot
        self._changes.notify()

    async def load_snapshot(self, stream_id: str) -> Snapshot | None:
        await trio.lowlevel.checkpoint()
        return self.snapshots.get(stream_id)

    # --- for assertions --------------------------------------------------------------------

    def stored(self, stream_id: str) -> list[StoredEvent]:
        return list(self.streams.get(stream_id, []))

    def types(self, stream_id: str) -> list[str]:
        return [ev.type for ev in self.streams.get(stream_id, [])]

    def version(self, stream_id: str) -> int:
        return len(self.streams.get(stream_id, []))

    def events(self, stream_id: str) -> list[e.Event]:
        """The stream's events rebuilt as domain values."""
        return [e.event_from_stored(ev.type, dict(ev.data)) for ev in self.stored(stream_id)]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        await self._changes.wait_until(predicate)

    async def wait_for_type(self, stream_id: str, event_type: str, count: int = 1) -> None:
        """Wait until ``stream_id`` holds at least ``count`` events of ``event_type``."""
        await self.wait_until(lambda: self.types(stream_id).count(event_type) >= count)


class RecordingPublisher:
    """Satisfies :class:`actors.ports.DevicePublisher`; records what it was asked to send.

    * ``attempts``: every message ``publish`` was called with, in call order;
    * ``messages``: the messages whose publish returned (the broker "acknowledged"), in order;
    * ``block()``: from now on a publish waits (``in_flight`` counts the waiting ones) until
      ``release()``; a blocked publish honours cancellation like a real one;
    * ``fail_next(n)``: the next ``n`` publishes raise ``error`` instead of sending.
    """

    def __init__(self) -> None:
        self.attempts: list[DeviceMessage] = []
        self.messages: list[DeviceMessage] = []
        self.in_flight = 0
        self._gate: trio.Event | None = None
        self._failures: deque[Exception] = deque()
        self._changes = _Changes()

    def block(self) -> None:
        if self._gate is None:
            self._gate = trio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    def fail_next(self, count: int = 1, error: Exception | None = None) -> None:
        for _ in range(count):
            self._failures.append(error or ConnectionError("injected publish failure"))

    async def publish(self, message: DeviceMessage) -> None:
        self.attempts.append(message)
        self._changes.notify()
        if self._failures:
            await trio.lowlevel.checkpoint()
            raise self._failures.popleft()
        gate = self._gate
        self.in_flight += 1
        self._changes.notify()
        try:
            if gate is not None:
                await gate.wait()
            else:
                await trio.lowlevel.checkpoint()
        finally:
            self.in_flight -= 1
        self.messages.append(message)
        self._changes.notify()

    def commands(self, transaction_id: str | None = None) -> list[DeviceCommand]:
        """The acknowledged device commands, optionally of one transaction."""
        return [
            m
            for m in self.messages
            if isinstance(m, DeviceCommand)
            and (transaction_id is None or m.transaction_id == transaction_id)
        ]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        await self._changes.wait_until(predicate)


class RecordingObserver:
    """Satisfies :class:`actors.ports.ActorObserver` and
    :class:`gateway.router.GatewayObserver`: every report is counted, nothing else happens.

    ``processed[kind]``, ``dropped[(kind, reason)]`` (kind None: not caused by a device
    message), ``commands[(action, status)]``, ``sent[kind]`` count reports; ``restarts`` and
    ``failed`` count bank actor restarts and failures, ``recovered`` restarts of failed ones;
    ``running`` is the last reported number of bank actors; ``append_seconds`` and
    ``connection`` list the reported values in order.
    """

    def __init__(self) -> None:
        self.processed: Counter[str | None] = Counter()
        self.dropped: Counter[tuple[str | None, str]] = Counter()
        self.commands: Counter[tuple[str, str]] = Counter()
        self.sent: Counter[str] = Counter()
        self.append_seconds: list[float] = []
        self.running: int | None = None
        self.restarts = 0
        self.failed = 0
        self.recovered = 0
        self.connection: list[bool] = []
        self._changes = _Changes()

    def message_processed(self, kind: str | None) -> None:
        self.processed[kind] += 1
        self._changes.notify()

    def message_dropped(self, kind: str | None, reason: str) -> None:
        self.dropped[(kind, reason)] += 1
        self._changes.notify()

    def append_took(self, seconds: float) -> None:
        self.append_seconds.append(seconds)

    def command_finished(self, action: str, status: str) -> None:
        self.commands[(action, status)] += 1
        self._changes.notify()

    def bank_actors_running(self, count: int) -> None:
        self.running = count

    def bank_actor_restarted(self) -> None:
        self.restarts += 1
        self._changes.notify()

    def bank_actor_failed(self) -> None:
        self.failed += 1
        self._changes.notify()

    def bank_actor_recovered(self) -> None:
        self.recovered += 1
        self._changes.notify()

    def device_message_sent(self, kind: str) -> None:
        self.sent[kind] += 1
        self._changes.notify()

    def mqtt_connection(self, connected: bool) -> None:
        self.connection.append(connected)

    def drops(self) -> int:
        """How many messages were dropped in all, for any reason."""
        return sum(self.dropped.values())

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        await self._changes.wait_until(predicate)


class MemoryCatalog:
    """Satisfies :class:`actors.ports.BankCatalog`: the banks in ``banks`` exist.

    ``follow`` is a :data:`~actors.ports.StoredEventListener` that adds a bank once its
    ``LockerBankCreated`` is stored, as the real directory does.
    """

    def __init__(self, banks: Iterable[str] = ()) -> None:
        self.banks: set[str] = set(banks)

    def is_bank(self, bank_id: str) -> bool:
        return bank_id in self.banks

    def follow(self, bank_id: str, stored: Sequence[StoredEvent]) -> None:
        if any(ev.type == "LockerBankCreated" for ev in stored):
            self.banks.add(bank_id)


# ---------------------------------------------------------------------------------------------
# router's ports


@dataclass(frozen=True, slots=True)
class InboxCall:
    """One call the router made on the bank inbox."""

    method: Literal["tell", "ask"]
    bank_id: str
    command: c.BankCommand
    kind: str | None
    secret: str | None = None
    # the message's acknowledgement, handed over with it (not compared)
    on_done: Callable[[], None] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a scripted ``ask`` answers (the router reads only ``events``)."""

    events: tuple[e.Event, ...] = ()


class RecordingInbox:
    """Satisfies :class:`gateway.router.BankInbox`; records ``tell`` and ``ask`` calls.

    * the banks in ``known`` exist (``is_known``);
    * every call is appended to ``calls`` first, then answered;
    * ``ask_if_available`` answers the next scripted item of ``answers`` (an :class:`Answer`
      is returned, None means the bank could not answer), or an empty :class:`Answer` when the
      script is exhausted;
    * ``error``, when set, is raised by every ``tell`` and ``ask_if_available`` (a broken
      inbox: a bug, not an unavailable bank).
    """

    def __init__(self, known: Iterable[str] = ()) -> None:
        self.known: set[str] = set(known)
        self.calls: list[InboxCall] = []
        self.answers: deque[Answer | None] = deque()
        self.error: Exception | None = None

    def is_known(self, bank_id: str) -> bool:
        return bank_id in self.known

    async def tell(
        self,
        bank_id: str,
        command: c.BankCommand,
        *,
        kind: str | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        self.calls.append(InboxCall("tell", bank_id, command, kind, on_done=on_done))
        await trio.lowlevel.checkpoint()
        if self.error is not None:
            raise self.error

    async def ask_if_available(
        self,
        bank_id: str,
        command: c.BankCommand,
        *,
        kind: str | None = None,
        secret: str | None = None,
        on_done: Callable[[], None] | None = None,
    ) -> Answer | None:
        self.calls.append(InboxCall("ask", bank_id, command, kind, secret, on_done))
        await trio.lowlevel.checkpoint()
        if self.error is not None:
            raise self.error
        return self.answers.popleft() if self.answers else Answer()


class TokenTable(dict[str, str]):
    """Satisfies :class:`gateway.router.TokenDirectory`: provisioning token hash -> bank id."""

    def bank_for_token(self, token_hash: str) -> str | None:
        return self.get(token_hash)


class RecordingQueue:
    """Satisfies :class:`gateway.router.MessageQueue`: ``messages`` lists what was enqueued."""

    def __init__(self) -> None:
        self.messages: list[DeviceMessage] = []

    async def enqueue(self, message: DeviceMessage) -> None:
        await trio.lowlevel.checkpoint()
        self.messages.append(message)


class RecordingMetricSink:
    """A :data:`gateway.router.MetricSink`: ``calls`` lists ``(tenant, agent, metric, payload)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, bytes]] = []
        self.acks: list[Callable[[], None]] = []

    async def __call__(
        self,
        tenant_id: str,
        agent_id: str,
        metric: str,
        payload: bytes,
        on_done: Callable[[], None] | None = None,
    ) -> None:
        await trio.lowlevel.checkpoint()
        self.calls.append((tenant_id, agent_id, metric, payload))
        if on_done is not None:
            self.acks.append(on_done)


class _NoMqtt:
    """Stands in for the MQTT client where nothing may use it: any attribute access fails."""

    def __getattr__(self, name: str) -> NoReturn:
        raise AssertionError(f"the MQTT client must not be used here (accessed {name!r})")


def no_mqtt() -> MqttClient:
    """An ``MqttClient`` stand-in for ``Gateway(...)`` when only ``route`` is exercised:
    ``route`` never touches MQTT, and this proves it (any use raises ``AssertionError``)."""
    return cast(MqttClient, _NoMqtt())


def json_payload(document: Any) -> bytes:
    """A message payload: ``document`` as compact UTF-8 JSON (bytes pass through unchanged)."""
    if isinstance(document, bytes):
        return document
    return json.dumps(document, separators=(",", ":")).encode()
