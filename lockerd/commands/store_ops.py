"""Event store maintenance: ``lockerd migrate``, ``export``, ``import``, ``rebuild-projections``.

All four take the database from ``LOCKERD_DATABASE`` or ``--database URL`` (SQLite or PostgreSQL)
and print a one-line summary on stderr. Exit status 0 on success, 1 when the store or the input
is at fault (one line naming the problem), 2 for bad configuration.

Export format: JSON lines, UTF-8, one event per line in position order::

    {"data":{...},"position":1,"recorded_at":"2026-11-24T10:00:00.123456Z","stream_id":"…","type":"…","version":1}

keys sorted, ``data`` compact and key-sorted, ``recorded_at`` in UTC with six fractional digits,
so the same events give byte-identical lines on either backend. With ``--snapshots`` the snapshot
of each stream follows the events as
``{"snapshot":{"state":"<base64>","stream_id":…,"version":…}}``.

Import appends the lines into an EMPTY store, in one transaction (all or nothing), keeping each
event's stream, version, type, data and ``recorded_at`` and the order of the lines; the store
assigns positions afresh (1, 2, 3, … on a fresh store), so positions match the source's only
where the source had no gaps (PostgreSQL leaves gaps after failed appends). Then every projection
is rebuilt from the imported events. Only the event log (and snapshots) travel: plain tables
(users, sessions, metrics, the generated server key) do not; see docs/deploy.md.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Final

import trio

from lockerd.commands.serve import add_config_flags, settings_or_exit
from lockerd.projections import EVERY_PROJECTION as PROJECTIONS
from store import Snapshot, SqlTx, StoredEvent, StoreUnavailable, open_store

NAMES: tuple[str, ...] = ("migrate", "export", "import", "rebuild-projections")
HELP: dict[str, str] = {
    "migrate": "create or upgrade the event store schema and the projection tables",
    "export": "write the event log (and optionally snapshots) as JSON lines",
    "import": "load an export into an empty store, then rebuild the projections",
    "rebuild-projections": "refill every read model from the event log",
}

#: Events per page when exporting, and rows per statement batch when importing.
PAGE: Final = 1000
_EVENT_KEYS: Final = frozenset({"position", "stream_id", "version", "type", "data", "recorded_at"})


class ImportRejected(Exception):
    """The input or the target store does not allow the import; nothing was written."""


@dataclass(frozen=True, slots=True)
class ImportSummary:
    events: int
    streams: int
    snapshots: int
    replayed: int


# --------------------------------------------------------------------------- format


def format_timestamp(moment: datetime) -> str:
    """UTC, six fractional digits, ``Z``: the SQLite backend's stored form, fixed width."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_line(event: StoredEvent) -> str:
    return _dumps(
        {
            "position": event.position,
            "stream_id": event.stream_id,
            "version": event.version,
            "type": event.type,
            "data": event.data,
            "recorded_at": format_timestamp(event.recorded_at),
        }
    )


def snapshot_line(snapshot: Snapshot) -> str:
    state = base64.b64encode(bytes(snapshot.state)).decode("ascii")
    return _dumps(
        {"snapshot": {"stream_id": snapshot.stream_id, "version": snapshot.version, "state": state}}
    )


# --------------------------------------------------------------------------- operations


async def export_store(url: str, output: IO[str], *, snapshots: bool = False) -> tuple[int, int]:
    """Write every event (then, if asked, every snapshot) as JSON lines; returns the counts.

    Paging by position is safe on a live store: both backends guarantee that ``read_all`` never
    skips an event below the last position returned. The export is the log as of each page.
    """
    events = 0
    saved = 0
    async with open_store(url) as store:
        after = 0
        while page := await store.read_all(after_position=after, limit=PAGE):
            output.writelines(event_line(event) + "\n" for event in page)
            events += len(page)
            after = page[-1].position
        if snapshots:
            for stream_id in await store.stream_ids():
                snapshot = await store.load_snapshot(stream_id)
                if snapshot is not None:
                    output.write(snapshot_line(snapshot) + "\n")
                    saved += 1
    output.flush()
    return events, saved


async def import_store(url: str, lines: Iterable[str]) -> ImportSummary:
    """Append an export into the EMPTY store at ``url``, then rebuild its projections.

    The lines are read and checked on the store's own thread, inside the one write transaction,
    so an input of any size is streamed and any problem leaves the store untouched.
    """
    async with open_store(url, PROJECTIONS) as store:
        loader = _Loader(lines)
        await store.write(loader.load)
        for snapshot in loader.snapshots:
            await store.save_snapshot(snapshot)
        replayed = await store.rebuild_projections()
    return ImportSummary(loader.events, len(loader.versions), len(loader.snapshots), replayed)


async def rebuild(url: str) -> int:
    async with open_store(url, PROJECTIONS) as store:
        return await store.rebuild_projections()


async def migrate(url: str) -> int:
    """Open the store with every projection, which applies what is missing; returns the version."""
    async with open_store(url, PROJECTIONS) as store:
        return await store.schema_version()


class _Loader:
    """Checks export lines and inserts the events; runs on the store thread."""

    INSERT: Final = (
        "INSERT INTO events (stream_id, version, type, data, recorded_at) VALUES (?, ?, ?, ?, ?)"
    )

    def __init__(self, lines: Iterable[str]) -> None:
        self.lines = lines
        self.events = 0
        self.versions: dict[str, int] = {}
        self.snapshots: list[Snapshot] = []
        self._last_position = 0

    def load(self, tx: SqlTx) -> None:
        if tx.query("SELECT 1 FROM events LIMIT 1"):
            raise ImportRejected("the target store is not empty; import needs an empty store")
        batch: list[tuple[str, int, str, str, str]] = []
        for number, line in enumerate(self.lines, start=1):
            if not line.strip():
                continue
            row = self._parse(number, line)
            if row is not None:
                batch.append(row)
            if len(batch) >= PAGE:
                tx.executemany(self.INSERT, batch)
                batch.clear()
        if batch:
            tx.executemany(self.INSERT, batch)

    def _parse(self, number: int, line: str) -> tuple[str, int, str, str, str] | None:
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise ImportRejected(f"line {number}: not JSON ({exc})") from None
        if not isinstance(record, dict):
            raise ImportRejected(f"line {number}: expected a JSON object")
        if set(record) == {"snapshot"}:
            self.snapshots.append(self._snapshot(number, record["snapshot"]))
            return None
        if self.snapshots:
            raise ImportRejected(f"line {number}: an event after the snapshots")
        if set(record) != _EVENT_KEYS:
            raise ImportRejected(
                f"line {number}: expected the keys {sorted(_EVENT_KEYS)}, got {sorted(record)}"
            )
        position, stream_id, version = record["position"], record["stream_id"], record["version"]
        type_, data, recorded_at = record["type"], record["data"], record["recorded_at"]
        if not _is_int(position) or position <= self._last_position:
            raise ImportRejected(f"line {number}: positions must be increasing integers")
        if not isinstance(stream_id, str) or not stream_id:
            raise ImportRejected(f"line {number}: stream_id must be a non-empty string")
        if not isinstance(type_, str) or not type_:
            raise ImportRejected(f"line {number}: type must be a non-empty string")
        if not isinstance(data, dict):
            raise ImportRejected(f"line {number}: data must be a JSON object")
        expected = self.versions.get(stream_id, 0) + 1
        if not _is_int(version) or version != expected:
            raise ImportRejected(
                f"line {number}: stream {stream_id!r} must continue with version {expected},"
                f" got {version!r}"
            )
        moment = _parse_timestamp(number, recorded_at)
        self._last_position = position
        self.versions[stream_id] = version
        self.events += 1
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return (stream_id, version, type_, text, format_timestamp(moment))

    def _snapshot(self, number: int, body: object) -> Snapshot:
        if not isinstance(body, dict) or set(body) != {"stream_id", "version", "state"}:
            raise ImportRejected(f"line {number}: a snapshot needs stream_id, version and state")
        stream_id, version, state = body["stream_id"], body["version"], body["state"]
        if not isinstance(stream_id, str) or not _is_int(version) or not isinstance(state, str):
            raise ImportRejected(f"line {number}: malformed snapshot")
        if not 1 <= version <= self.versions.get(stream_id, 0):
            raise ImportRejected(
                f"line {number}: snapshot of {stream_id!r} at version {version} is beyond its"
                " events"
            )
        try:
            raw = base64.b64decode(state, validate=True)
        except (binascii.Error, ValueError):
            raise ImportRejected(f"line {number}: snapshot state is not base64") from None
        return Snapshot(stream_id=stream_id, version=version, state=raw)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_timestamp(number: int, value: object) -> datetime:
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if moment.tzinfo is not None:
                return moment
    raise ImportRejected(f"line {number}: recorded_at must be an ISO 8601 time with a zone")


# --------------------------------------------------------------------------- CLI


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser)
    if name == "export":
        parser.add_argument(
            "--output", "-o", default="-", help="file to write (default: - for stdout)"
        )
        parser.add_argument(
            "--snapshots", action="store_true", help="also write each stream's snapshot"
        )
    elif name == "import":
        parser.add_argument(
            "--input", "-i", default="-", help="file to read (default: - for stdin)"
        )


def _text_stream(path: str, mode: str, std: IO[str], stack: ExitStack) -> IO[str]:
    if path == "-":
        return std
    return stack.enter_context(open(path, mode, encoding="utf-8", newline="\n"))


def _lines(stream: IO[str]) -> Iterator[str]:
    yield from stream


def run(args: argparse.Namespace) -> int:
    settings = settings_or_exit(args)
    url = settings.database
    command: str = args.command
    try:
        with ExitStack() as stack:
            if command == "migrate":
                version = trio.run(migrate, url)
                _say(f"schema up to date (version {version})")
            elif command == "rebuild-projections":
                replayed = trio.run(rebuild, url)
                _say(f"projections rebuilt from {replayed} events")
            elif command == "export":
                output = _text_stream(args.output, "w", sys.stdout, stack)
                events, saved = trio.run(_export, url, output, args.snapshots)
                _say(f"exported {events} events" + (f", {saved} snapshots" if saved else ""))
            elif command == "import":
                source = _text_stream(args.input, "r", sys.stdin, stack)
                summary = trio.run(import_store, url, _lines(source))
                _say(
                    f"imported {summary.events} events in {summary.streams} streams"
                    f" and {summary.snapshots} snapshots; projections rebuilt"
                    f" from {summary.replayed} events"
                )
            else:  # pragma: no cover - argparse only offers NAMES
                raise AssertionError(command)
    except (ImportRejected, StoreUnavailable, OSError, UnicodeDecodeError) as exc:
        _say(f"{command} failed: {exc}")
        return 1
    return 0


async def _export(url: str, output: IO[str], snapshots: bool) -> tuple[int, int]:
    return await export_store(url, output, snapshots=snapshots)


def _say(message: str) -> None:
    print(f"lockerd: {message}", file=sys.stderr)
