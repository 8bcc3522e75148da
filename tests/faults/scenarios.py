"""Fault scenarios, shared by the CI suite (short runs, ``tests/faults``) and ``bench/faults.py``
(long runs with figures for docs/benchmarks.md).

* :func:`kill9_under_opens`: ``lockerd serve`` as a real process is killed with SIGKILL a few
  times while a user opens compartments and a device answers every command; afterwards every
  open the API accepted must have exactly one outcome in the bank's history, none may be left
  pending, and none that the device answered may have ended ``timeout``.
* :func:`broker_restart_under_load`: the broker is restarted while a device publishes events
  (each with its own ``event_id``) and an agent publishes metric points (each with its own
  ``dedupe_id``), all QoS 1; afterwards every one of them is in the history or the metric
  table exactly once, lockerd is connected again and the inbound counter adds up.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from gateway.mqtt import open_mqtt_client
from tests.support.device import Answer, TestDevice, client_settings, device, now_iso
from tests.support.mosquitto import MosquittoBroker, free_port
from tests.support.service import RunningLockerd, eventually

REPO = Path(__file__).resolve().parents[2]
#: the admin token of the ``lockerd serve`` processes started here, unlike any other test's: a
#: request answered by some other lockerd that took the port while ours was down is refused
SERVE_ADMIN_TOKEN = f"faults-{uuid.uuid4().hex}"
ADMIN = {"Authorization": f"Bearer {SERVE_ADMIN_TOKEN}"}
TERMINAL = ("CompartmentOpened", "CommandFailed", "CommandTimedOut")
STATUS_OF = {"CompartmentOpened": "success", "CommandFailed": "error", "CommandTimedOut": "timeout"}


# ------------------------------------------------------------------------ lockerd serve


class ServeProcess:
    """``lockerd serve`` as a child process on a fixed port and database, restartable."""

    def __init__(
        self, workdir: Path, broker: MosquittoBroker, database_url: str, **env: str
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "lockerd.log"
        workdir.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "LOCKERD_HTTP": f"127.0.0.1:{self.port}",
            "LOCKERD_MQTT_URL": broker.url,
            "LOCKERD_DATABASE": database_url,
            "LOCKERD_ADMIN_TOKEN": SERVE_ADMIN_TOKEN,
            "LOCKERD_SECRET_KEY": "faults-secret-key",
            "LOCKERD_MQTT_CLIENT_ID": f"lockerd-faults-{self.port}",
            "LOCKERD_LOG_LEVEL": "warning",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "lockerd.cli", "serve"],
                env=self.env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.kills += 1

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def wait_healthy(self, http: httpx.AsyncClient, within: float = 60.0) -> None:
        async def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"lockerd serve exited:\n{self.log_tail()}")
            try:
                response = await http.get(f"{self.url}/healthz", timeout=2.0)
                # and it is ours: the port may have been taken by another test's lockerd
                ours = await http.get(f"{self.url}/api/admin/tenants", headers=ADMIN, timeout=2.0)
            except httpx.TransportError:
                return False
            return response.status_code == 200 and ours.status_code == 200

        await eventually(healthy, within=within)


@asynccontextmanager
async def serving(
    workdir: Path, broker: MosquittoBroker, database_url: str, **env: str
) -> AsyncIterator[ServeProcess]:
    process = ServeProcess(workdir, broker, database_url, **env)
    process.start()
    try:
        yield process
    finally:
        await trio.to_thread.run_sync(process.stop)


# ------------------------------------------------------------------------ kill -9


@dataclass
class Kill9Report:
    restarts: int = 0
    opens_sent: int = 0
    accepted: int = 0  # 202: a transaction id was handed out
    refused: Counter[int] = field(default_factory=Counter)  # 4xx/5xx by status
    unreachable: int = 0  # the process was down (connection refused or cut)
    answered: int = 0  # commands the device answered (answers acknowledged by the broker)
    requested: int = 0  # CompartmentOpeningRequested in the history
    outcomes: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)  # accepted, but not in the history
    duplicated: list[str] = field(default_factory=list)  # more than one outcome
    stuck: list[str] = field(default_factory=list)  # still pending at the end
    answered_but_timeout: list[str] = field(default_factory=list)
    #: of those, the ones whose answer did arrive, after the timeout (LateAnswerReceived); the
    #: others' answers were lost
    late_answers: int = 0
    duplicate_commands: int = 0  # the same command delivered to the device again

    def as_json(self) -> dict[str, Any]:
        return {
            "restarts": self.restarts,
            "opens_sent": self.opens_sent,
            "accepted": self.accepted,
            "refused": dict(self.refused),
            "unreachable": self.unreachable,
            "answered": self.answered,
            "requested": self.requested,
            "outcomes": dict(self.outcomes),
            "lost": len(self.lost),
            "duplicated_terminal_events": len(self.duplicated),
            "stuck_pending": len(self.stuck),
            "answered_but_timeout": len(self.answered_but_timeout),
            "of_which_late_answers": self.late_answers,
            "duplicate_commands_delivered": self.duplicate_commands,
        }


async def _setup_bank(http: httpx.AsyncClient, base: str, compartments: int) -> dict[str, Any]:
    body = {
        "name": "kill -9",
        "heartbeat_interval_seconds": 2,
        "compartments": [
            {"number": n, "slave_id": 1, "address": n - 1} for n in range(1, compartments + 1)
        ],
    }
    bank = (await http.post(f"{base}/api/admin/locker-banks", json=body, headers=ADMIN)).json()
    email = f"opener-{uuid.uuid4().hex[:8]}@x.org"
    user = await http.post(
        f"{base}/api/admin/users",
        json={"email": email, "password": "long-password", "name": "Opener"},
        headers=ADMIN,
    )
    for compartment in bank["compartments"]:
        await http.post(
            f"{base}/api/admin/compartments/{compartment['id']}/grants",
            json={"user_id": user.json()["id"]},
            headers=ADMIN,
        )
    login = await http.post(f"{base}/api/login", json={"email": email, "password": "long-password"})
    bank["user_token"] = login.json()["token"]
    result: dict[str, Any] = bank
    return result


def _answer_recorder(dev: TestDevice, answered: set[str], seen: Counter[str]) -> None:
    """Record every command the device answered, after the broker acknowledged the answer."""
    respond = dev.respond

    async def recording(command: dict[str, Any], answer: Answer | None = None) -> None:
        seen[command["transaction_id"]] += 1
        await respond(command, answer)
        answered.add(command["transaction_id"])

    dev.respond = recording  # type: ignore[method-assign]


async def kill9_under_opens(
    broker: MosquittoBroker,
    workdir: Path,
    database_url: str,
    *,
    restarts: int = 3,
    opens_per_second: float = 20.0,
    seconds_between_kills: float = 2.0,
    command_timeout: int = 8,
    compartments: int = 16,
    progress: Callable[[str], None] | None = None,
    restart_times: list[float] | None = None,
) -> Kill9Report:
    """The kill -9 scenario (module doc); returns what it counted.

    ``restart_times``, when given, receives the seconds from each kill to ``/healthz`` 200.
    """
    report = Kill9Report()
    accepted: list[str] = []
    answered: set[str] = set()
    deliveries: Counter[str] = Counter()
    async with (
        httpx.AsyncClient(timeout=5.0) as http,
        serving(
            workdir, broker, database_url, LOCKERD_COMMAND_TIMEOUT=str(command_timeout)
        ) as serve,
    ):
        await serve.wait_healthy(http)
        bank = await _setup_bank(http, serve.url, compartments)
        user = {"Authorization": f"Bearer {bank['user_token']}"}
        ids = [c["id"] for c in bank["compartments"]]
        async with device(
            broker.url,
            bank["id"],
            client_id=f"kill9-device-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        ) as dev:
            _answer_recorder(dev, answered, deliveries)
            running = trio.Event()

            async def beat() -> None:
                while True:
                    await dev.heartbeat(retain=False)
                    await trio.sleep(0.5)  # the device's own pace

            load_done = trio.Event()

            async def open_load() -> None:
                try:
                    await opens()
                finally:
                    load_done.set()

            async def opens() -> None:
                turn = 0
                while not running.is_set():
                    compartment = ids[turn % len(ids)]
                    turn += 1
                    report.opens_sent += 1
                    try:
                        response = await http.post(
                            f"{serve.url}/api/compartments/{compartment}/open", headers=user
                        )
                    except httpx.TransportError:
                        report.unreachable += 1
                    else:
                        if response.status_code == 202:
                            accepted.append(response.json()["transaction_id"])
                        else:
                            report.refused[response.status_code] += 1
                    await trio.sleep(1.0 / opens_per_second)  # the load's own pace

            async with trio.open_nursery() as nursery:
                nursery.start_soon(beat)
                await eventually(lambda: _is_online(http, serve.url, bank["id"]), within=30.0)
                nursery.start_soon(open_load)
                for round_ in range(restarts):
                    await trio.sleep(seconds_between_kills)  # let opens pile up in between
                    await trio.to_thread.run_sync(serve.kill9)
                    killed_at = trio.current_time()
                    report.restarts += 1
                    serve.start()
                    await serve.wait_healthy(http)
                    if restart_times is not None:
                        restart_times.append(trio.current_time() - killed_at)
                    if progress is not None:
                        progress(f"kill -9 {round_ + 1}/{restarts}: {len(accepted)} accepted")
                await trio.sleep(seconds_between_kills)
                running.set()
                # the open in flight must be answered first: one recorded after the history
                # was found settled would look stuck
                await load_done.wait()

                # everything settles: every accepted open gets its outcome within the timeout
                async def settled() -> bool:
                    events = await _history(http, serve.url, bank["id"])
                    requested = {
                        e["data"]["transaction_id"]
                        for e in events
                        if e["type"] == "CompartmentOpeningRequested"
                    }
                    done = {e["data"]["transaction_id"] for e in events if e["type"] in TERMINAL}
                    return requested <= done and set(accepted) <= requested

                with contextlib.suppress(trio.TooSlowError):  # counted below as lost or stuck
                    await eventually(settled, within=command_timeout + 30.0)
                nursery.cancel_scope.cancel()
        events = await _history(http, serve.url, bank["id"])
    requested_ids = [
        e["data"]["transaction_id"] for e in events if e["type"] == "CompartmentOpeningRequested"
    ]
    outcome_events: dict[str, list[str]] = {}
    for e in events:
        if e["type"] in TERMINAL:
            outcome_events.setdefault(e["data"]["transaction_id"], []).append(e["type"])
    report.accepted = len(accepted)
    report.answered = len(answered)
    report.requested = len(requested_ids)
    report.lost = [tx for tx in accepted if tx not in set(requested_ids)]
    report.duplicated = [tx for tx, found in outcome_events.items() if len(found) > 1]
    report.stuck = [tx for tx in requested_ids if tx not in outcome_events]
    for tx in requested_ids:
        for found in outcome_events.get(tx, [])[:1]:
            report.outcomes[STATUS_OF[found]] += 1
    report.answered_but_timeout = [
        tx for tx in answered if outcome_events.get(tx, [None])[0] == "CommandTimedOut"
    ]
    late = {e["data"]["transaction_id"] for e in events if e["type"] == "LateAnswerReceived"}
    report.late_answers = sum(1 for tx in report.answered_but_timeout if tx in late)
    report.duplicate_commands = sum(n - 1 for n in deliveries.values() if n > 1)
    return report


async def _is_online(http: httpx.AsyncClient, base: str, bank_id: str) -> bool:
    try:
        view = await http.get(f"{base}/api/admin/locker-banks/{bank_id}", headers=ADMIN)
    except httpx.TransportError:
        return False
    return bool(view.status_code == 200 and view.json()["presence"] == "online")


async def _history(http: httpx.AsyncClient, base: str, bank_id: str) -> list[dict[str, Any]]:
    response = await http.get(f"{base}/api/admin/locker-banks/{bank_id}/events", headers=ADMIN)
    response.raise_for_status()
    events: list[dict[str, Any]] = response.json()
    return events


# ------------------------------------------------------------------------ broker restart


@dataclass
class BrokerRestartReport:
    restarts: int = 0
    events_sent: int = 0
    events_recorded: int = 0
    events_duplicated: int = 0
    points_sent: int = 0
    points_stored: int = 0
    inbound_processed: dict[str, float] = field(default_factory=dict)
    inbound_dropped: dict[str, float] = field(default_factory=dict)
    reconnected: bool = False

    @property
    def events_lost(self) -> int:
        return self.events_sent - self.events_recorded

    @property
    def points_lost(self) -> int:
        return self.points_sent - self.points_stored

    def as_json(self) -> dict[str, Any]:
        return {
            "restarts": self.restarts,
            "events_sent": self.events_sent,
            "events_lost": self.events_lost,
            "events_duplicated": self.events_duplicated,
            "points_sent": self.points_sent,
            "points_lost": self.points_lost,
            "inbound_processed": self.inbound_processed,
            "inbound_dropped": self.inbound_dropped,
            "reconnected": self.reconnected,
        }


def inbound_counts(svc: RunningLockerd) -> tuple[dict[str, float], dict[str, float]]:
    processed: dict[str, float] = {}
    dropped: dict[str, float] = {}
    for family in svc.context.metrics.registry.collect():
        if family.name != "lockerd_inbound_messages":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.value:
                target = processed if sample.labels["outcome"] == "processed" else dropped
                target[sample.labels["kind"]] = sample.value
    return processed, dropped


async def broker_restart_under_load(
    svc: RunningLockerd,
    broker: MosquittoBroker,
    *,
    restarts: int = 2,
    messages_per_second: float = 100.0,
    seconds_between_restarts: float = 1.5,
    progress: Callable[[str], None] | None = None,
) -> BrokerRestartReport:
    """The broker-restart scenario (module doc), against an in-process lockerd."""
    report = BrokerRestartReport()
    tenant = (await svc.admin_post("/api/admin/tenants", {"name": "load"})).json()["id"]
    agent = (await svc.admin_post(f"/api/admin/tenants/{tenant}/agents", {"name": "a"})).json()
    bank = await svc.create_bank(heartbeat_interval_seconds=3600)
    event_ids: list[str] = []
    dedupe_ids: list[str] = []
    stop = trio.Event()
    settings = client_settings(
        broker.url, f"restart-load-{uuid.uuid4().hex[:8]}", clean_session=False
    )
    async with open_mqtt_client(settings) as client:

        async def load() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                event_id = f"ev-{n}"
                payload = json.dumps(
                    {
                        "type": "event",
                        "event": "fault_probe",
                        "event_id": event_id,
                        "timestamp": now_iso(),
                        "data": {"n": n},
                    }
                ).encode()
                event_ids.append(event_id)
                await client.publish(f"locker/{bank['id']}/event", payload, qos=1)
                dedupe = f"pt-{n}"
                point = json.dumps({"value": n, "dedupe_id": dedupe}).encode()
                dedupe_ids.append(dedupe)
                await client.publish(f"metrics/{tenant}/{agent['agent_id']}/probe", point, qos=1)
                await trio.sleep(1.0 / messages_per_second)  # the load's own pace

        async with trio.open_nursery() as nursery:
            nursery.start_soon(load)
            for round_ in range(restarts):
                await trio.sleep(seconds_between_restarts)
                await trio.to_thread.run_sync(broker.restart)
                report.restarts += 1
                if progress is not None:
                    progress(f"broker restart {round_ + 1}/{restarts}: {len(event_ids)} sent")
            await trio.sleep(seconds_between_restarts)
            stop.set()
        report.events_sent = len(event_ids)
        report.points_sent = len(dedupe_ids)

        async def all_in() -> bool:
            processed, _ = inbound_counts(svc)
            return (
                processed.get("event", 0) >= report.events_sent
                and processed.get("metric", 0) >= report.points_sent
            )

        with contextlib.suppress(trio.TooSlowError):  # counted below as lost
            await eventually(all_in, within=60.0)
    history = await svc.context.store.read_stream(bank["id"])
    recorded = Counter(
        str(ev.data.get("event_id")) for ev in history if ev.type == "DeviceEventRecorded"
    )
    report.events_recorded = sum(1 for event_id in event_ids if recorded[event_id] >= 1)
    report.events_duplicated = sum(n - 1 for n in recorded.values() if n > 1)

    def count_points(tx: Any) -> int:
        rows = tx.query(
            "SELECT COUNT(DISTINCT dedupe_id) FROM metric_points WHERE agent_id = ?",
            [agent["agent_id"]],
        )
        return int(rows[0][0])

    report.points_stored = await svc.context.tables.read(count_points)
    report.inbound_processed, report.inbound_dropped = inbound_counts(svc)
    report.reconnected = svc.context.mqtt.connected
    return report
