"""Many simulated locker banks in one Trio process: one task per device, shared counters.

Used by ``lockerd simulate``, by the benchmarks (``bench/``) and by the integration tests.
Banks come either from the admin API (:func:`create_banks`) or from a file of provisioning
tokens (:func:`read_token_file`); devices already provisioned in an earlier run can be
resumed from a credentials file (:func:`read_credentials_file`).
"""

from __future__ import annotations

import json
import math
import random
import sys
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx
import structlog
import trio

from lockerd.device.protocol import Credentials
from lockerd.device.simulated import Behaviour, FleetStats, Link, SimulatedDevice

log = structlog.get_logger("lockerd.device.fleet")


@dataclass(frozen=True, slots=True)
class BankTicket:
    """What one simulated device starts from: a provisioning token, or credentials from an
    earlier run (then ``client_id`` is the one it was provisioned with)."""

    compartments: int
    provisioning_token: str | None = None
    bank_id: str | None = None
    credentials: Credentials | None = None
    client_id: str | None = None
    compartment_ids: tuple[str, ...] = ()  # backend ids by number (1, 2, ...), when known


class SimulationError(Exception):
    """Something the user must fix before a simulation can run (a wrong admin token, no
    lockerd at ``--api``, no broker): its message is one line, shown as it is."""


# ---------------------------------------------------------------------------------- banks


def compartment_layout(count: int) -> list[dict[str, int]]:
    """Compartments 1..count wired 16 to a Modbus slave: slave 1 addresses 0-15, slave 2 ..."""
    return [
        {"number": n, "slave_id": 1 + (n - 1) // 16, "address": (n - 1) % 16}
        for n in range(1, count + 1)
    ]


async def create_banks(
    api: str,
    admin_token: str,
    count: int,
    compartments: int,
    *,
    heartbeat_interval_seconds: int = 10,
    name_prefix: str = "sim",
    concurrency: int = 8,
    http_timeout: float = 30.0,
) -> list[BankTicket]:
    """Create ``count`` banks through ``POST /api/admin/locker-banks``, in order."""
    if count < 0 or compartments < 1:
        raise ValueError("need count >= 0 and compartments >= 1")
    interval = min(3600, max(1, heartbeat_interval_seconds))
    tickets: list[BankTicket | None] = [None] * count
    headers = {"Authorization": f"Bearer {admin_token}"}
    send, receive = trio.open_memory_channel[int](count)
    for index in range(count):
        send.send_nowait(index)
    send.close()

    async def worker(client: httpx.AsyncClient) -> None:
        async for index in receive:
            body = {
                "name": f"{name_prefix}-{index + 1:05d}",
                "location": "lockerd simulate",
                "heartbeat_interval_seconds": interval,
                "compartments": compartment_layout(compartments),
            }
            try:
                response = await client.post("/api/admin/locker-banks", json=body, headers=headers)
            except httpx.HTTPError as exc:
                raise SimulationError(
                    f"cannot reach the lockerd API at {api} ({connection_failure(exc)}):"
                    " is lockerd running? (--api)"
                ) from None
            if response.status_code != 201:
                raise SimulationError(_creation_refused(response))
            created = response.json()
            tickets[index] = BankTicket(
                compartments=compartments,
                provisioning_token=created["provisioning_token"],
                bank_id=created["id"],
                compartment_ids=tuple(
                    c["id"] for c in sorted(created["compartments"], key=lambda c: c["number"])
                ),
            )

    failures: list[SimulationError] = []

    async def guarded_worker(client: httpx.AsyncClient, scope: trio.CancelScope) -> None:
        try:
            await worker(client)
        except SimulationError as exc:
            failures.append(exc)
            scope.cancel()  # the first failure stops the others: one error, said once

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    try:
        client = httpx.AsyncClient(base_url=api, timeout=http_timeout, limits=limits)
    except (ValueError, httpx.InvalidURL) as exc:  # not a URL
        raise SimulationError(f"--api: {api!r} is not an http(s) URL ({exc})") from None
    async with client, trio.open_nursery() as nursery:
        for _ in range(max(1, min(concurrency, count))):
            nursery.start_soon(guarded_worker, client, nursery.cancel_scope)
    if failures:
        raise failures[0]
    return [ticket for ticket in tickets if ticket is not None]


def connection_failure(error: BaseException) -> str:
    """The operating system's reason behind a failed connection ("Connection refused"), found
    among the causes (Trio and httpx wrap it), or the error's own text."""
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop(0)
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    return str(error) or type(error).__name__


def _creation_refused(response: httpx.Response) -> str:
    """One line for a refused ``POST /api/admin/locker-banks``."""
    try:
        message = str(response.json().get("message", ""))
    except (ValueError, AttributeError):
        message = response.text[:200]
    status = response.status_code
    if status == 401:
        hint = "the admin token was not accepted (--admin-token / LOCKERD_ADMIN_TOKEN)"
    elif status == 403:
        hint = "the token is not an admin's (--admin-token / LOCKERD_ADMIN_TOKEN)"
    elif status == 404:
        hint = "no lockerd admin API there (--api)"
    else:
        hint = "creating a bank failed"
    detail = f": {message}" if message else ""
    return f"{hint} (HTTP {status}{detail})"


BROKER_CHECK_SECONDS = 5.0


async def check_broker(host: str, port: int) -> None:
    """Raise :class:`SimulationError` unless something accepts TCP connections at host:port.

    Devices retry a broker that is down for ever, which is right for a device but leaves a
    user who mistyped ``--mqtt-url`` looking at zero connections: this says so at once.
    """
    try:
        with trio.fail_after(BROKER_CHECK_SECONDS):
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        reason = (
            f"no answer within {BROKER_CHECK_SECONDS:g} s"
            if isinstance(exc, trio.TooSlowError)
            else connection_failure(exc)
        )
        raise SimulationError(
            f"cannot reach the broker at {host}:{port} ({reason}): is it running?"
            " (--mqtt-url / LOCKERD_MQTT_URL)"
        ) from None
    await stream.aclose()


def read_token_file(path: Path, default_compartments: int) -> list[BankTicket]:
    """One provisioning token per line, optionally followed by its number of compartments;
    blank lines and ``#`` comments are ignored."""
    tickets = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
            raise ValueError(f"{path}:{number}: expected 'TOKEN [COMPARTMENTS]'")
        count = int(parts[1]) if len(parts) == 2 else default_compartments
        tickets.append(BankTicket(compartments=count, provisioning_token=parts[0]))
    return tickets


def read_credentials_file(path: Path, default_compartments: int) -> list[BankTicket]:
    """JSON lines written by :meth:`Fleet.credentials_lines` (``--save-credentials``)."""
    tickets = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        tickets.append(
            BankTicket(
                compartments=int(row.get("compartments", default_compartments)),
                bank_id=row["bank_id"],
                credentials=Credentials(row["bank_id"], row["mqtt_user"], row["mqtt_password"]),
                client_id=row["client_id"],
            )
        )
    return tickets


# ---------------------------------------------------------------------------------- fleet


class Fleet:
    """Runs one :class:`SimulatedDevice` per ticket until :meth:`stop` or cancellation."""

    def __init__(
        self,
        link: Link,
        tickets: Sequence[BankTicket],
        behaviour: Behaviour = Behaviour(),
        *,
        connect_concurrency: int = 64,
        seed: int | None = None,
        remember_answers: int = 200_000,
    ) -> None:
        self.stats = FleetStats()
        self.stop_requested = trio.Event()
        self.limiter = trio.CapacityLimiter(max(1, connect_concurrency))
        self.remember_answers = remember_answers
        self._answered: OrderedDict[str, None] = OrderedDict()
        self._answer_waiters: dict[str, trio.Event] = {}
        base = random.Random(seed)
        run_tag = f"{base.getrandbits(32):08x}"
        self.devices: list[SimulatedDevice] = []
        for index, ticket in enumerate(tickets):
            self.devices.append(
                SimulatedDevice(
                    link,
                    provisioning_token=ticket.provisioning_token,
                    credentials=ticket.credentials,
                    compartments=ticket.compartments,
                    behaviour=behaviour,
                    client_id=ticket.client_id or f"sim-{run_tag}-{index:05d}",
                    stats=self.stats,
                    rng=random.Random(base.getrandbits(64)),
                    connect_limiter=self.limiter,
                    stop=self.stop_requested,
                    on_answer=self._note_answer,
                )
            )
        self._scope: trio.CancelScope | None = None
        self._done = trio.Event()

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    for device in self.devices:
                        nursery.start_soon(self._run_device, device)
                    task_status.started()
        finally:
            self._done.set()

    async def _run_device(self, device: SimulatedDevice) -> None:
        try:
            await device.run()
        except Exception as exc:  # one broken device must not take the fleet down
            self.stats.device_errors += 1
            device.error = repr(exc)
            device.status = "failed"
            log.exception("device_crashed", client_id=device.client_id)

    async def stop(self, grace: float = 5.0) -> None:
        """Graceful: every connected device publishes its offline state and disconnects;
        whatever has not finished after ``grace`` seconds is cancelled."""
        self.stop_requested.set()
        with trio.move_on_after(grace):
            await self._done.wait()
        if self._scope is not None:
            self._scope.cancel()
        await self._done.wait()

    # ------------------------------------------------------------------ observing

    def device_for_bank(self, bank_id: str) -> SimulatedDevice:
        for device in self.devices:
            if device.bank_id == bank_id:
                return device
        raise KeyError(bank_id)

    async def wait_online(self, count: int | None = None) -> None:
        """Wait until ``count`` devices (default: all) are connected and have beaten once."""
        wanted = len(self.devices) if count is None else count
        await self.stats.wait_until(lambda s: s.online >= wanted)

    async def wait_provisioned(self, count: int | None = None) -> None:
        wanted = len(self.devices) if count is None else count
        await self.stats.wait_until(lambda s: s.provisioned + s.provisioning_failed >= wanted)

    def _note_answer(self, bank_id: str, transaction_id: str, payload: bytes) -> None:
        self._answered[transaction_id] = None
        while len(self._answered) > self.remember_answers:
            self._answered.popitem(last=False)
        waiter = self._answer_waiters.pop(transaction_id, None)
        if waiter is not None:
            waiter.set()

    async def wait_answered(self, transaction_id: str) -> None:
        """Return once some device has published its first answer to ``transaction_id``."""
        if transaction_id in self._answered:
            return
        waiter = self._answer_waiters.setdefault(transaction_id, trio.Event())
        await waiter.wait()

    def credentials_lines(self) -> list[str]:
        lines = []
        for device in self.devices:
            creds = device.credentials
            if creds is None:
                continue
            lines.append(
                json.dumps(
                    {
                        "client_id": device.client_id,
                        "bank_id": creds.bank_id,
                        "mqtt_user": creds.mqtt_user,
                        "mqtt_password": creds.mqtt_password,
                        "compartments": len(device.doors),
                    }
                )
            )
        return lines


# ---------------------------------------------------------------------------------- output


def progress_line(stats: FleetStats, elapsed: float) -> str:
    s = stats
    return (
        f"[{elapsed:7.1f}s] banks {s.devices} | provisioned {s.provisioned}"
        f"{f' (failed {s.provisioning_failed})' if s.provisioning_failed else ''}"
        f" | connected {s.connected} (online {s.online}) | heartbeats {s.heartbeats}"
        f" | commands {s.commands}, answered {s.answered}"
        f" (ok {s.succeeded}, jammed {s.jammed}, expired {s.expired}, refused {s.refused})"
        f" dup {s.duplicates} dropped {s.dropped} | crashes {s.crashes}"
    )


async def report_progress(
    stats: FleetStats, started: float, stream: TextIO = sys.stderr, interval: float = 1.0
) -> None:
    """Rewrite one status line on a terminal; print a line per ``interval`` otherwise."""
    tty = stream.isatty()
    width = 0
    try:
        while True:
            line = progress_line(stats, trio.current_time() - started)
            if tty:
                stream.write("\r" + line.ljust(width))
                width = len(line)
            else:
                stream.write(line + "\n")
            stream.flush()
            await trio.sleep(interval if tty else max(interval, 5.0))
    finally:
        if tty:
            stream.write("\n")
            stream.flush()


def summary(fleet: Fleet, elapsed: float) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    for device in fleet.devices:
        statuses[device.status] = statuses.get(device.status, 0) + 1
    errors = sorted({device.error for device in fleet.devices if device.error})
    counters = fleet.stats.snapshot()
    rate = counters["answered"] / elapsed if elapsed > 0 else math.nan
    return {
        "elapsed_seconds": round(elapsed, 3),
        "devices": statuses,
        "counters": counters,
        "answers_per_second": round(rate, 2),
        "errors": errors[:20],
    }


def summary_text(report: dict[str, Any]) -> str:
    counters = report["counters"]
    lines = [
        f"lockerd simulate: {counters['devices']} banks for {report['elapsed_seconds']:.1f} s",
        "  devices:   " + ", ".join(f"{k} {v}" for k, v in sorted(report["devices"].items())),
        f"  provisioning: {counters['provisioned']} provisioned,"
        f" {counters['provisioning_failed']} refused, {counters['provisioning_retries']} retries",
        f"  connections: {counters['connects']} connects, {counters['connect_failures']} lost"
        f" or failed, {counters['auth_refused']} refused by the broker,"
        f" {counters['crashes']} simulated crashes",
        f"  heartbeats: {counters['heartbeats']}",
        f"  commands: {counters['commands']} received, {counters['answered']} answered"
        f" ({report['answers_per_second']}/s): {counters['succeeded']} ok,"
        f" {counters['jammed']} DOOR_JAMMED, {counters['expired']} EXPIRED,"
        f" {counters['refused']} other errors; {counters['duplicates']} duplicates,"
        f" {counters['dropped']} dropped, {counters['malformed']} unanswerable",
        f"  doors: {counters['door_pulses']} pulses, {counters['events']} events;"
        f" configs applied: {counters['configs_applied']}",
    ]
    if report["errors"]:
        lines.append("  errors: " + "; ".join(report["errors"]))
    return "\n".join(lines)
