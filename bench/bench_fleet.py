"""Fleet scale: N banks connected at once, heartbeating at their configured interval.

Per run:

1. **Baseline** (fresh broker, no lockerd): N simulated devices with made-up credentials
   connect and send their first heartbeat: the broker and simulator alone.
2. **lockerd** (fresh broker, ``lockerd serve`` child): N banks created through the admin
   API, N devices provision, connect and beat; then a steady-state window of W seconds.

Figures: time until every device is online (device view) and until the admin API shows every
bank ``online`` (backend view); in the window, heartbeats processed per second (from
/metrics, should equal N / interval), lockerd CPU and RSS, RSS per bank.

The simulator (all N devices) runs in this process, on the same two cores as lockerd and the
broker; its CPU is reported too.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.common import (
    ADMIN_TOKEN,
    INBOUND,
    PROVISIONING_PASSWORD,
    LockerdProcess,
    admin_headers,
    broker_rss,
    metric,
    new_broker,
    self_cpu_seconds,
    summary,
    wait_time_wait,
)
from lockerd.device import protocol as p
from lockerd.device.fleet import BankTicket, Fleet, create_banks
from lockerd.device.simulated import Behaviour, Link


def _behaviour(interval: float) -> Behaviour:
    return Behaviour(heartbeat_interval=interval, provision_timeout=120.0)


async def baseline(
    workdir: Path, count: int, interval: float, time_limit: float
) -> dict[str, float]:
    broker = new_broker(workdir / "broker-baseline")
    try:
        tickets = [
            BankTicket(
                compartments=4,
                credentials=p.Credentials(str(uuid.uuid4()), f"user-{n}", "password"),
            )
            for n in range(count)
        ]
        fleet = Fleet(
            Link(broker.host, broker.port), tickets, _behaviour(interval), connect_concurrency=256
        )
        async with trio.open_nursery() as nursery:
            cpu0 = self_cpu_seconds()
            started = time.monotonic()
            await nursery.start(fleet.run)
            with trio.fail_after(time_limit):
                await fleet.wait_online()
            online = time.monotonic() - started
            sim_cpu = self_cpu_seconds() - cpu0
            rss = broker_rss(broker)
            await fleet.stop(grace=30.0)
            nursery.cancel_scope.cancel()
    finally:
        broker.close()
    return {"online_seconds": online, "broker_rss_mib": rss / 2**20, "sim_cpu_seconds": sim_cpu}


async def _backend_online(http: httpx.AsyncClient, base: str) -> int:
    listed = (await http.get(f"{base}/api/admin/locker-banks", headers=admin_headers())).json()
    return sum(1 for bank in listed if bank["presence"] == "online")


async def lockerd_phase(
    workdir: Path, count: int, interval: float, window: float, time_limit: float
) -> dict[str, float]:
    broker = new_broker(workdir / "broker")
    service = LockerdProcess(workdir / "lockerd", broker)
    try:
        async with httpx.AsyncClient(timeout=60.0) as http:
            service.start()
            await service.wait_ready(http)
            rss_empty = service.rss()
            created = time.monotonic()
            tickets = await create_banks(
                service.url,
                ADMIN_TOKEN,
                count,
                4,
                heartbeat_interval_seconds=int(interval),
            )
            create_seconds = time.monotonic() - created
            link = Link(broker.host, broker.port, "provisioning_client", PROVISIONING_PASSWORD)
            fleet = Fleet(link, tickets, _behaviour(interval), connect_concurrency=256)
            async with trio.open_nursery() as nursery:
                started = time.monotonic()
                await nursery.start(fleet.run)
                with trio.fail_after(time_limit):
                    await fleet.wait_provisioned()
                provisioned = time.monotonic() - started
                with trio.fail_after(time_limit):
                    await fleet.wait_online()
                devices_online = time.monotonic() - started
                with trio.fail_after(time_limit):
                    while await _backend_online(http, service.url) < count:  # noqa: ASYNC110
                        await trio.sleep(0.5)  # presence lives behind the HTTP API
                backend_online = time.monotonic() - started
                labels = {"kind": "state", "outcome": "processed"}
                beats0 = await metric(http, service.url, INBOUND, **labels)
                cpu0, sim0, t0 = service.cpu(), self_cpu_seconds(), time.monotonic()
                await trio.sleep(window)  # the steady state is a span of time
                beats1 = await metric(http, service.url, INBOUND, **labels)
                cpu1, sim1, t1 = service.cpu(), self_cpu_seconds(), time.monotonic()
                still_online = await _backend_online(http, service.url)
                rss = service.rss()
                await fleet.stop(grace=30.0)
                nursery.cancel_scope.cancel()
    finally:
        service.stop()
        broker.close()
    span = t1 - t0
    beats = beats1 - beats0
    return {
        "banks_created_per_s": count / create_seconds,
        "provisioned_seconds": provisioned,
        "devices_online_seconds": devices_online,
        "backend_online_seconds": backend_online,
        "heartbeats_per_s": beats / span,
        "expected_heartbeats_per_s": count / interval,
        "cpu_percent": (cpu1 - cpu0) / span * 100,
        "cpu_us_per_heartbeat": (cpu1 - cpu0) / max(1.0, beats) * 1e6,
        "sim_cpu_percent": (sim1 - sim0) / span * 100,
        "rss_mib": rss / 2**20,
        "rss_kib_per_bank": (rss - rss_empty) / 1024 / count,
        "online_at_end": float(still_online),
    }


async def run(sizes: dict[str, Any], runs: int, workdir: Path) -> dict[str, Any]:
    count, interval = sizes["banks"], sizes["interval"]
    window, timeout = sizes["window"], sizes["timeout"]
    results = []
    for index in range(runs):
        run_dir = workdir / f"run{index + 1}"
        await wait_time_wait()
        base = await baseline(run_dir, count, interval, timeout)
        await wait_time_wait()
        lk = await lockerd_phase(run_dir, count, interval, window, timeout)
        results.append({"baseline": base, "lockerd": lk})

    def pick(key: str) -> list[float]:
        return [r["lockerd"][key] for r in results]

    figures = {
        "lockerd_devices_online_s": {"unit": "s", **summary(pick("devices_online_seconds"))},
        "lockerd_backend_online_s": {"unit": "s", **summary(pick("backend_online_seconds"))},
        "lockerd_provisioned_s": {"unit": "s", **summary(pick("provisioned_seconds"))},
        "baseline_devices_online_s": {
            "unit": "s",
            **summary([r["baseline"]["online_seconds"] for r in results]),
        },
        "ratio_backend_online_vs_baseline": {
            "unit": "ratio",
            **summary(
                [
                    r["lockerd"]["backend_online_seconds"] / r["baseline"]["online_seconds"]
                    for r in results
                ]
            ),
        },
        "lockerd_heartbeats_per_s": {"unit": "msg/s", **summary(pick("heartbeats_per_s"))},
        "ratio_heartbeats_vs_expected": {
            "unit": "ratio",
            **summary([h / (count / interval) for h in pick("heartbeats_per_s")]),
        },
        "lockerd_cpu_percent": {"unit": "% of a core", **summary(pick("cpu_percent"))},
        "lockerd_cpu_us_per_heartbeat": {"unit": "µs", **summary(pick("cpu_us_per_heartbeat"))},
        "simulator_cpu_percent": {"unit": "% of a core", **summary(pick("sim_cpu_percent"))},
        "lockerd_rss_mib": {"unit": "MiB", **summary(pick("rss_mib"))},
        "lockerd_rss_kib_per_bank": {"unit": "KiB", **summary(pick("rss_kib_per_bank"))},
        "lockerd_banks_created_per_s": {"unit": "banks/s", **summary(pick("banks_created_per_s"))},
        "baseline_broker_rss_mib": {
            "unit": "MiB",
            **summary([r["baseline"]["broker_rss_mib"] for r in results]),
        },
    }
    online_at_end = pick("online_at_end")
    notes = [
        f"{count} banks, heartbeat every {interval:g} s, steady window {window:g} s",
    ]
    if any(n < count for n in online_at_end):
        notes.append(f"banks online at the end of the window: {online_at_end}")
    return {
        "title": "Fleet scale",
        "params": {"banks": count, "interval_s": interval, "window_s": window, "runs": runs},
        "figures": figures,
        "notes": notes,
        "raw": results,
    }
