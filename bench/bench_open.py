"""Open round trip: HTTP open -> command -> simulated device -> answer -> transaction success.

Per run:

1. **Baseline** (fresh broker, no lockerd): the same number of simulated banks, and a bare
   "backend" (our Trio MQTT adapter) that publishes ``open_compartment`` commands and waits
   for the answers: the MQTT round trip through the same broker and device code, with the
   same concurrency. (Devices log in with made-up credentials: the bench broker is
   anonymous.)
2. **lockerd** (fresh broker, ``lockerd serve`` child): banks created and provisioned through
   the service, users created, signed in and granted one compartment per worker; first a
   ``GET /healthz`` loop at the same concurrency (HTTP floor), then the workers open their
   compartments in a loop: ``POST /api/compartments/{id}/open`` (202) -> the device answers
   -> ``GET /api/transactions/{id}`` until it is no longer pending.

Every loop is bounded by a count and a time. Latency is from sending the POST to seeing the
final status; the device's answer is awaited as an event, only the last step polls.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.common import (
    ADMIN_TOKEN,
    PROVISIONING_PASSWORD,
    LockerdProcess,
    admin_headers,
    new_broker,
    percentile,
    summary,
)
from bench.profiling import PySpy
from gateway.mqtt import MqttSettings, open_mqtt_client
from lockerd.device import protocol as p
from lockerd.device.fleet import BankTicket, Fleet, create_banks
from lockerd.device.simulated import Behaviour, Delay, Link, set_tcp_nodelay

WAIT = 30.0
BEHAVIOUR = Behaviour(door_open=Delay.fixed(0.1), heartbeat_interval=10.0)


def _latency_figures(latencies: list[float], count: int, elapsed: float) -> dict[str, float]:
    return {
        "per_s": count / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "count": count,
    }


async def baseline(
    workdir: Path, banks: int, compartments: int, workers: int, sizes: dict[str, Any]
) -> dict[str, float]:
    broker = new_broker(workdir / "broker-baseline")
    try:
        tickets = [
            BankTicket(
                compartments=compartments,
                credentials=p.Credentials(str(uuid.uuid4()), f"user-{n}", "password"),
            )
            for n in range(banks)
        ]
        fleet = Fleet(Link(broker.host, broker.port), tickets, BEHAVIOUR, seed=1)
        settings = MqttSettings(broker.host, broker.port, "bench-bare-backend", clean_session=True)
        waiters: dict[str, trio.Event] = {}
        async with trio.open_nursery() as nursery:
            await nursery.start(fleet.run)
            with trio.fail_after(WAIT):
                await fleet.wait_online()
            async with open_mqtt_client(settings, reconnect=False) as backend:
                set_tcp_nodelay(backend)
                await backend.subscribe([("locker/+/response", 1)])

                async def route() -> None:
                    async for message in backend.messages():
                        tid = json.loads(message.payload)["transaction_id"]
                        waiter = waiters.pop(tid, None)
                        if waiter is not None:
                            waiter.set()

                nursery.start_soon(route)

                async def phase(count: int, seconds: float) -> dict[str, float]:
                    latencies: list[float] = []
                    deadline = time.monotonic() + seconds
                    budget = [sizes["max_opens"]]

                    async def worker(index: int) -> None:
                        bank = tickets[index % banks].credentials
                        assert bank is not None
                        number = index // banks + 1
                        while time.monotonic() < deadline and budget[0] > 0:
                            budget[0] -= 1
                            tid = str(uuid.uuid4())
                            now = datetime.now(UTC)
                            payload = json.dumps(
                                {
                                    "action": "open_compartment",
                                    "transaction_id": tid,
                                    "timestamp": p.iso(now),
                                    "expires_at": p.iso(now + timedelta(seconds=30)),
                                    "data": {"compartment_number": number},
                                }
                            ).encode()
                            waiter = waiters[tid] = trio.Event()
                            started = time.monotonic()
                            await backend.publish(p.command_topic(bank.bank_id), payload, qos=1)
                            with trio.fail_after(WAIT):
                                await waiter.wait()
                            latencies.append(time.monotonic() - started)

                    started = time.monotonic()
                    async with trio.open_nursery() as work:
                        for index in range(count):
                            work.start_soon(worker, index)
                    return _latency_figures(latencies, len(latencies), time.monotonic() - started)

                sequential = await phase(1, sizes["sequential_seconds"])
                concurrent = await phase(workers, sizes["seconds"])
            await fleet.stop()
            nursery.cancel_scope.cancel()
    finally:
        broker.close()
    concurrent["c1_p50_ms"] = sequential["p50_ms"]
    concurrent["c1_p99_ms"] = sequential["p99_ms"]
    return concurrent


async def _users(
    http: httpx.AsyncClient, base: str, count: int, tag: str
) -> list[tuple[str, dict[str, str]]]:
    """Create and sign in ``count`` users; returns (user id, auth headers)."""
    users = []
    for n in range(count):
        email = f"bench-{tag}-{n}@example.org"
        created = await http.post(
            f"{base}/api/admin/users",
            json={"email": email, "password": "bench-password-1", "name": f"Bench {n}"},
            headers=admin_headers(),
        )
        if created.status_code != 201:
            raise RuntimeError(f"POST /api/admin/users: {created.status_code} {created.text[:200]}")
        login = await http.post(
            f"{base}/api/login", json={"email": email, "password": "bench-password-1"}
        )
        if login.status_code != 200:
            raise RuntimeError(f"POST /api/login: {login.status_code} {login.text[:200]}")
        users.append((created.json()["id"], {"Authorization": f"Bearer {login.json()['token']}"}))
    return users


async def lockerd_phase(
    workdir: Path,
    banks: int,
    compartments: int,
    workers: int,
    sizes: dict[str, Any],
    profile_to: Path | None = None,
    nodelay_patch: bool = False,
) -> dict[str, Any]:
    broker = new_broker(workdir / "broker")
    service = LockerdProcess(workdir / "lockerd", broker, nodelay_patch=nodelay_patch)
    limits = httpx.Limits(max_connections=workers + 4, max_keepalive_connections=workers + 4)
    try:
        async with httpx.AsyncClient(timeout=WAIT, limits=limits) as http:
            service.start()
            await service.wait_ready(http)
            base = service.url
            tickets = await create_banks(base, ADMIN_TOKEN, banks, compartments)
            link = Link(broker.host, broker.port, "provisioning_client", PROVISIONING_PASSWORD)
            fleet = Fleet(link, tickets, BEHAVIOUR, seed=2)
            async with trio.open_nursery() as nursery:
                await nursery.start(fleet.run)
                with trio.fail_after(WAIT * 2):
                    await fleet.wait_online()
                await _wait_backend_online(http, base, [t.bank_id or "" for t in tickets])
                users = await _users(http, base, min(4, workers), uuid.uuid4().hex[:6])
                assignments = []
                for index in range(workers):
                    ticket = tickets[index % banks]
                    compartment_id = ticket.compartment_ids[index // banks]
                    user_id, headers = users[index % len(users)]
                    granted = await http.post(
                        f"{base}/api/admin/compartments/{compartment_id}/grants",
                        json={"user_id": user_id},
                        headers=admin_headers(),
                    )
                    if granted.status_code != 201:
                        raise RuntimeError(
                            f"POST grants: {granted.status_code} {granted.text[:200]}"
                        )
                    assignments.append((compartment_id, headers))

                health = await _healthz_loop(http, base, workers, sizes["http_seconds"])
                # warm-up: one open per worker (actor caches, connections)
                await _open_loop(http, base, fleet, assignments, 1.0e9, workers)
                sequential = await _open_loop(
                    http,
                    base,
                    fleet,
                    assignments[:1],
                    time.monotonic() + sizes["sequential_seconds"],
                    sizes["max_opens"],
                )
                spy = PySpy(service.pid, profile_to) if profile_to is not None else None
                if spy is not None:
                    spy.start()
                cpu0 = service.cpu()
                opens = await _open_loop(
                    http,
                    base,
                    fleet,
                    assignments,
                    time.monotonic() + sizes["seconds"],
                    sizes["max_opens"],
                )
                cpu = service.cpu() - cpu0
                if spy is not None:
                    spy.stop()
                rss = service.rss()
                await fleet.stop()
                nursery.cancel_scope.cancel()
    finally:
        service.stop()
        broker.close()
    opens["cpu_ms_per_open"] = cpu / max(1, opens["count"]) * 1000
    opens["rss_mib"] = rss / 2**20
    opens["c1_p50_ms"] = sequential["p50_ms"]
    opens["c1_p99_ms"] = sequential["p99_ms"]
    opens["c1_device_answer_p50_ms"] = sequential["device_answer_p50_ms"]
    return {"opens": opens, "healthz": health}


async def _wait_backend_online(http: httpx.AsyncClient, base: str, bank_ids: list[str]) -> None:
    """The devices' first heartbeats must have been processed before opens are accepted."""
    with trio.fail_after(WAIT):
        while True:
            listed = (
                await http.get(f"{base}/api/admin/locker-banks", headers=admin_headers())
            ).json()
            online = {b["id"] for b in listed if b["presence"] == "online"}
            if online >= set(bank_ids):
                return
            await trio.sleep(0.05)  # state behind an HTTP API: nothing to await


async def _healthz_loop(
    http: httpx.AsyncClient, base: str, workers: int, seconds: float
) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < deadline and len(latencies) < 1_000_000:
            started = time.monotonic()
            response = await http.get(f"{base}/healthz")
            response.raise_for_status()
            latencies.append(time.monotonic() - started)

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker)
    return _latency_figures(latencies, len(latencies), time.monotonic() - started)


async def _open_loop(
    http: httpx.AsyncClient,
    base: str,
    fleet: Fleet,
    assignments: list[tuple[str, dict[str, str]]],
    deadline: float,
    max_opens: int,
) -> dict[str, Any]:
    latencies: list[float] = []
    accepted: list[float] = []
    answered: list[float] = []
    statuses: Counter[str] = Counter()
    budget = [max_opens]
    polls = [0]
    single = deadline > 1.0e8  # warm-up: exactly one open per worker

    async def worker(compartment_id: str, headers: dict[str, str]) -> None:
        while budget[0] > 0 and (single or time.monotonic() < deadline):
            budget[0] -= 1
            started = time.monotonic()
            response = await http.post(
                f"{base}/api/compartments/{compartment_id}/open", headers=headers
            )
            if response.status_code != 202:
                statuses[f"http_{response.status_code}"] += 1
                if single:
                    return
                continue
            t_accepted = time.monotonic()
            tid = response.json()["transaction_id"]
            with trio.fail_after(WAIT):
                await fleet.wait_answered(tid)
            t_answered = time.monotonic()
            pause = 0.002
            with trio.fail_after(WAIT):
                while True:
                    polls[0] += 1
                    tx = await http.get(f"{base}/api/transactions/{tid}", headers=headers)
                    status = tx.json()["status"]
                    if status != "pending":
                        break
                    # the transaction lives behind the HTTP API; back off so that polling
                    # does not load the service it measures
                    await trio.sleep(pause)
                    pause = min(0.02, pause * 1.5)
            done = time.monotonic()
            statuses[status] += 1
            latencies.append(done - started)
            accepted.append(t_accepted - started)
            answered.append(t_answered - t_accepted)
            if single:
                return

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for compartment_id, headers in assignments:
            nursery.start_soon(worker, compartment_id, headers)
    elapsed = time.monotonic() - started
    figures: dict[str, Any] = _latency_figures(latencies, len(latencies), elapsed)
    figures["accept_p50_ms"] = percentile(accepted, 50) * 1000
    figures["device_answer_p50_ms"] = percentile(answered, 50) * 1000
    figures["statuses"] = dict(statuses)
    figures["polls_per_open"] = polls[0] / max(1, len(latencies))
    return figures


async def one_run(
    workdir: Path, sizes: dict[str, Any], profile_to: Path | None = None
) -> dict[str, Any]:
    banks, compartments, workers = sizes["banks"], sizes["compartments"], sizes["workers"]
    if workers > banks * compartments:
        raise ValueError("more workers than compartments")
    base = await baseline(workdir, banks, compartments, workers, sizes)
    lk = await lockerd_phase(workdir, banks, compartments, workers, sizes, profile_to)
    result = {"baseline_mqtt": base, **lk}
    if sizes.get("what_if_nodelay"):
        patched = await lockerd_phase(
            workdir / "nodelay", banks, compartments, workers, sizes, nodelay_patch=True
        )
        result["opens_nodelay"] = patched["opens"]
    return result


async def run(sizes: dict[str, Any], runs: int, workdir: Path) -> dict[str, Any]:
    results = [await one_run(workdir / f"run{i + 1}", sizes) for i in range(runs)]

    def pick(section: str, key: str) -> list[float]:
        return [float(r[section][key]) for r in results]

    figures = {
        "lockerd_opens_per_s": {"unit": "opens/s", **summary(pick("opens", "per_s"))},
        "lockerd_open_p50_ms": {"unit": "ms", **summary(pick("opens", "p50_ms"))},
        "lockerd_open_p99_ms": {"unit": "ms", **summary(pick("opens", "p99_ms"))},
        "lockerd_open_accept_p50_ms": {"unit": "ms", **summary(pick("opens", "accept_p50_ms"))},
        "lockerd_open_device_answer_p50_ms": {
            "unit": "ms",
            **summary(pick("opens", "device_answer_p50_ms")),
        },
        "lockerd_cpu_ms_per_open": {"unit": "ms", **summary(pick("opens", "cpu_ms_per_open"))},
        "lockerd_open_c1_p50_ms": {"unit": "ms", **summary(pick("opens", "c1_p50_ms"))},
        "lockerd_open_c1_p99_ms": {"unit": "ms", **summary(pick("opens", "c1_p99_ms"))},
        "lockerd_open_c1_device_answer_p50_ms": {
            "unit": "ms",
            **summary(pick("opens", "c1_device_answer_p50_ms")),
        },
        "baseline_mqtt_c1_p50_ms": {"unit": "ms", **summary(pick("baseline_mqtt", "c1_p50_ms"))},
        "baseline_mqtt_roundtrips_per_s": {
            "unit": "rt/s",
            **summary(pick("baseline_mqtt", "per_s")),
        },
        "baseline_mqtt_p50_ms": {"unit": "ms", **summary(pick("baseline_mqtt", "p50_ms"))},
        "baseline_mqtt_p99_ms": {"unit": "ms", **summary(pick("baseline_mqtt", "p99_ms"))},
        "baseline_http_healthz_per_s": {"unit": "req/s", **summary(pick("healthz", "per_s"))},
        "baseline_http_healthz_p50_ms": {"unit": "ms", **summary(pick("healthz", "p50_ms"))},
        "ratio_opens_vs_mqtt_roundtrips": {
            "unit": "ratio",
            **summary([r["opens"]["per_s"] / r["baseline_mqtt"]["per_s"] for r in results]),
        },
        "ratio_open_c1_p50_vs_mqtt_c1_p50": {
            "unit": "ratio",
            **summary([r["opens"]["c1_p50_ms"] / r["baseline_mqtt"]["c1_p50_ms"] for r in results]),
        },
        "ratio_opens_vs_healthz": {
            "unit": "ratio",
            **summary([r["opens"]["per_s"] / r["healthz"]["per_s"] for r in results]),
        },
    }
    if all("opens_nodelay" in r for r in results):
        figures["whatif_nodelay_opens_per_s"] = {
            "unit": "opens/s",
            **summary(pick("opens_nodelay", "per_s")),
        }
        figures["whatif_nodelay_open_p50_ms"] = {
            "unit": "ms",
            **summary(pick("opens_nodelay", "p50_ms")),
        }
        figures["whatif_nodelay_open_p99_ms"] = {
            "unit": "ms",
            **summary(pick("opens_nodelay", "p99_ms")),
        }
        figures["whatif_nodelay_open_c1_p50_ms"] = {
            "unit": "ms",
            **summary(pick("opens_nodelay", "c1_p50_ms")),
        }
        figures["whatif_nodelay_c1_device_answer_p50_ms"] = {
            "unit": "ms",
            **summary(pick("opens_nodelay", "c1_device_answer_p50_ms")),
        }
        figures["whatif_nodelay_device_answer_p50_ms"] = {
            "unit": "ms",
            **summary(pick("opens_nodelay", "device_answer_p50_ms")),
        }
        figures["ratio_whatif_nodelay_opens_vs_mqtt_roundtrips"] = {
            "unit": "ratio",
            **summary([r["opens_nodelay"]["per_s"] / r["baseline_mqtt"]["per_s"] for r in results]),
        }
    statuses: Counter[str] = Counter()
    for r in results:
        statuses.update(r["opens"]["statuses"])
    polls = [round(r["opens"]["polls_per_open"], 2) for r in results]
    return {
        "title": "Open round trip",
        "params": {
            "banks": sizes["banks"],
            "compartments": sizes["compartments"],
            "workers": sizes["workers"],
            "seconds": sizes["seconds"],
            "runs": runs,
        },
        "figures": figures,
        "notes": [
            f"final transaction statuses over all runs: {dict(statuses)};"
            f" GET /api/transactions polls per open: {polls}",
            "c1: one worker opening one compartment after another (latency without queueing);"
            f" the other figures: {sizes['workers']} workers at once (throughput)",
            "an open costs the app two HTTP requests at least (POST open, GET transaction);"
            " the healthz loop is the HTTP floor at the same concurrency",
            "the baseline's bare backend shares this process with the simulated devices and"
            " the workers (lockerd runs in its own), so the baseline is if anything understated",
            "whatif_nodelay_*: the same lockerd phase with TCP_NODELAY set on lockerd's MQTT"
            " socket by a monkeypatch in bench/lockerd_nodelay.py (the suggested fix; no core"
            " code changed)",
        ],
        "raw": results,
    }
