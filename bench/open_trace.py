"""Where the time of one idle open goes: a timeline of each step, over many opens.

    python bench/open_trace.py [--opens 200]

lockerd runs in this process (``running_service``) on a private Mosquitto, with one bank
whose simulated device answers at once; one open at a time. The service's own parts are
wrapped (only here, for measuring) to timestamp each step of an open:

    POST sent -> ask the bank -> append (requested) -> 202 received
              -> publish command -> PUBACK -> append (dispatched)
              -> device has the command -> device answers -> gateway hands the answer over
              -> append (opened) -> the live model knows -> the client sees success

The client reads the outcome three ways in turn (polling every 2 ms, ``?wait=``, the
websocket) so each gets its own "seen" step. Everything shares one process and one Trio loop,
so the figures are an idle lower bound, free of the scheduling noise of a loaded service.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import trio  # noqa: E402
from trio_websocket import open_websocket_url  # noqa: E402

from bench.common import ADMIN_TOKEN, PROVISIONING_PASSWORD, new_broker  # noqa: E402
from bench.rawhttp import RawHttp  # noqa: E402
from domain import commands as c  # noqa: E402
from lockerd.config import load_settings  # noqa: E402
from lockerd.device.fleet import Fleet, create_banks  # noqa: E402
from lockerd.device.simulated import Behaviour, Delay, Link  # noqa: E402
from lockerd.logging import configure_logging  # noqa: E402
from lockerd.service import running_service  # noqa: E402
from lockerd.wiring import Service  # noqa: E402

STEPS = (
    "ask",
    "append_requested_start",
    "append_requested_done",
    "accepted",
    "publish_start",
    "puback",
    "append_dispatched_done",
    "device_has_command",
    "device_answered",
    "answer_handed_over",
    "append_opened_start",
    "append_opened_done",
    "live_knows",
    "seen",
)


class Timeline:
    """Moments (perf_counter, relative to the POST) of the open in flight."""

    def __init__(self) -> None:
        self.start = 0.0
        self.marks: dict[str, float] = {}
        self.all: dict[str, list[float]] = defaultdict(list)

    def begin(self) -> None:
        self.start = time.perf_counter()
        self.marks = {}

    def mark(self, step: str) -> None:
        self.marks.setdefault(step, (time.perf_counter() - self.start) * 1000)

    def end(self, mode: str) -> None:
        for step, value in self.marks.items():
            self.all[f"{mode}:{step}"].append(value)


def instrument(service: Service, timeline: Timeline) -> None:
    """Wrap the service's parts to mark each step (benchmark only)."""
    store: Any = service.store
    append = store.append

    async def timed_append(stream_id: str, expected: int, events: Any) -> Any:
        kind = events[0].type if events else ""
        name = {
            "CompartmentOpeningRequested": "requested",
            "CommandDispatched": "dispatched",
            "CompartmentOpened": "opened",
        }.get(kind)
        if name:
            timeline.mark(f"append_{name}_start")
        result = await append(stream_id, expected, events)
        if name:
            timeline.mark(f"append_{name}_done")
        return result

    store.append = timed_append
    registry: Any = service.registry
    ask, tell = registry.ask, registry.tell

    async def timed_ask(bank_id: str, command: Any, **kwargs: Any) -> Any:
        if isinstance(command, c.RequestOpen):
            timeline.mark("ask")
        elif isinstance(command, c.RecordAnswer):
            timeline.mark("answer_handed_over")
        return await ask(bank_id, command, **kwargs)

    async def timed_tell(bank_id: str, command: Any, **kwargs: Any) -> Any:
        if isinstance(command, c.RecordAnswer):
            timeline.mark("answer_handed_over")
        return await tell(bank_id, command, **kwargs)

    registry.ask, registry.tell = timed_ask, timed_tell
    registry.ask_if_available = _wrap_if_available(registry.ask_if_available, timeline)
    mqtt: Any = service.mqtt
    publish = mqtt.publish

    async def timed_publish(topic: str, payload: bytes, *args: Any, **kwargs: Any) -> None:
        command = topic.endswith("/command")
        if command:
            timeline.mark("publish_start")
        await publish(topic, payload, *args, **kwargs)
        if command:
            timeline.mark("puback")

    mqtt.publish = timed_publish
    follow = service.live.follow

    def timed_follow(bank_id: str, events: Any) -> None:
        follow(bank_id, events)
        if any(event.type == "CompartmentOpened" for event in events):
            timeline.mark("live_knows")

    # the actors call the listener list they were given; replace the entry in place
    listeners = service.registry.services.listeners
    listeners[listeners.index(follow)] = timed_follow


def instrument_device(device: Any, timeline: Timeline) -> None:
    """Mark when the simulated device has the command and when it answers."""
    original_note = device.on_answer
    original_command = device._on_command

    def noted(bank_id: str, transaction_id: str, payload: bytes) -> None:
        timeline.mark("device_answered")
        if original_note is not None:
            original_note(bank_id, transaction_id, payload)

    def commanded(payload: bytes, boot: Any) -> None:
        timeline.mark("device_has_command")
        original_command(payload, boot)

    device.on_answer = noted
    device._on_command = commanded


def _wrap_if_available(inner: Callable[..., Any], timeline: Timeline) -> Callable[..., Any]:
    async def timed(bank_id: str, command: Any, **kwargs: Any) -> Any:
        if isinstance(command, c.RecordAnswer):
            timeline.mark("answer_handed_over")
        return await inner(bank_id, command, **kwargs)

    return timed


async def trace(opens: int, workdir: Path) -> dict[str, Any]:
    broker = new_broker(workdir / "broker")
    settings = load_settings(
        {},
        {
            "LOCKERD_HTTP": "127.0.0.1:0",
            "LOCKERD_MQTT_URL": broker.url,
            "LOCKERD_DATABASE": f"sqlite:///{workdir / 'lockerd.db'}",
            "LOCKERD_ADMIN_TOKEN": ADMIN_TOKEN,
            "LOCKERD_PROVISIONING_PASSWORD": PROVISIONING_PASSWORD,
            "LOCKERD_SECRET_KEY": "trace-secret-key",
            "LOCKERD_LOG_LEVEL": "warning",
        },
    )
    configure_logging("console", "warning")
    timeline = Timeline()
    try:
        async with running_service(settings) as service, trio.open_nursery() as nursery:
            base = service.http_url
            instrument(service, timeline)
            tickets = await create_banks(base, ADMIN_TOKEN, 1, 1)
            link = Link(broker.host, broker.port, "provisioning_client", PROVISIONING_PASSWORD)
            fleet = Fleet(link, tickets, Behaviour(door_open=Delay.fixed(0.05)), seed=1)
            for simulated in fleet.devices:
                instrument_device(simulated, timeline)
            await nursery.start(fleet.run)
            await fleet.wait_online()
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                while not all(  # noqa: ASYNC110 - state behind the HTTP API
                    b["presence"] == "online"
                    for b in (await http.get("/api/admin/locker-banks", headers=admin)).json()
                ):
                    await trio.sleep(0.05)
                user = (
                    await http.post(
                        "/api/admin/users",
                        json={"email": "t@example.org", "password": "trace-pass", "name": "T"},
                        headers=admin,
                    )
                ).json()["id"]
                cid = tickets[0].compartment_ids[0]
                await http.post(
                    f"/api/admin/compartments/{cid}/grants", json={"user_id": user}, headers=admin
                )
                token = (
                    await http.post(
                        "/api/login", json={"email": "t@example.org", "password": "trace-pass"}
                    )
                ).json()["token"]
            client = RawHttp(base, {"Authorization": f"Bearer {token}"})
            await client.connect()
            ws_url = base.replace("http://", "ws://") + f"/ws/app?token={token}"
            async with open_websocket_url(ws_url) as ws:
                await ws.get_message()
                for mode in ("poll", "wait", "ws") * (opens // 3 + 1):
                    await one_open(client, ws, cid, mode, timeline)
                    await trio.sleep(0.12)  # the door closes (its events are not timed)
            await fleet.stop()
            nursery.cancel_scope.cancel()
    finally:
        broker.close()
    table = {
        key: {"p50_ms": statistics.median(values), "n": len(values)}
        for key, values in sorted(timeline.all.items())
    }
    return table


async def one_open(client: RawHttp, ws: Any, cid: str, mode: str, timeline: Timeline) -> None:
    timeline.begin()
    response = await client.post(f"/api/compartments/{cid}/open")
    assert response.status == 202, response.body
    timeline.mark("accepted")
    tid = response.json()["transaction_id"]
    if mode == "poll":
        while (await client.get(f"/api/transactions/{tid}")).json()["status"] == "pending":  # noqa: ASYNC110
            await trio.sleep(0.002)  # the app's polling interval
    elif mode == "wait":
        await client.get(f"/api/transactions/{tid}?wait=30")
    else:
        while True:
            message = json.loads(await ws.get_message())
            if message["type"] != "transaction":
                continue
            view = message["transaction"]
            if view["transaction_id"] == tid and view["status"] != "pending":
                break
    timeline.mark("seen")
    timeline.end(mode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--opens", type=int, default=150)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table = trio.run(trace, args.opens, Path(tmp))
    for mode in ("poll", "wait", "ws"):
        print(f"-- {mode}")
        for step in STEPS:
            row = table.get(f"{mode}:{step}")
            if row:
                print(f"  {step:28s} {row['p50_ms']:7.2f} ms  (n={row['n']})")
    print(json.dumps(table))


if __name__ == "__main__":
    main()
