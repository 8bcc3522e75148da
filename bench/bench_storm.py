"""Provisioning storm: S devices redeem their provisioning tokens at the same moment.

Per run:

1. **Baseline** (fresh broker, no lockerd): a bare paho responder in its own process
   (``bench/paho_provisioner.py``) answers every ``locker/register/{token}`` at once with
   made-up credentials: the MQTT request/reply floor for the same simulated devices.
2. **lockerd** (fresh broker, ``lockerd serve`` child): S banks created through the admin API
   (that rate is reported too), then S simulated devices provision through the service.

Figures: provisions/s (S / time from the fleet's start until the last device holds its
credentials) and the per-device latency from publishing the registration to the reply.
Both phases connect the devices the same way (each opens its own provisioning connection).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.common import (
    ADMIN_TOKEN,
    PROVISIONING_PASSWORD,
    LockerdProcess,
    new_broker,
    percentile,
    summary,
    wait_time_wait,
)
from lockerd.device.fleet import BankTicket, Fleet, create_banks
from lockerd.device.simulated import Behaviour, Link

BENCH_DIR = Path(__file__).resolve().parent
WAIT = 120.0
BEHAVIOUR = Behaviour(heartbeat_interval=30.0, provision_timeout=60.0)


async def _storm(fleet: Fleet, count: int) -> dict[str, float]:
    async with trio.open_nursery() as nursery:
        started = time.monotonic()
        await nursery.start(fleet.run)
        with trio.fail_after(WAIT):
            await fleet.wait_provisioned()
        elapsed = time.monotonic() - started
        await fleet.stop()
        nursery.cancel_scope.cancel()
    latencies = [d.provisioning_seconds for d in fleet.devices if d.provisioning_seconds]
    if fleet.stats.provisioned != count:
        raise RuntimeError(f"{fleet.stats.provisioned} of {count} devices provisioned")
    return {
        "per_s": count / elapsed,
        "seconds": elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "retries": float(fleet.stats.provisioning_retries),
    }


async def baseline(workdir: Path, count: int) -> dict[str, float]:
    broker = new_broker(workdir / "broker-baseline")
    responder = subprocess.Popen(  # noqa: ASYNC220 - starting a process does not block
        [sys.executable, str(BENCH_DIR / "paho_provisioner.py"), broker.host, str(broker.port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert responder.stdout is not None
        line = await trio.to_thread.run_sync(responder.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"baseline provisioner did not start: {line!r}")
        tickets = [BankTicket(compartments=4, provisioning_token=f"tok{n}") for n in range(count)]
        fleet = Fleet(Link(broker.host, broker.port), tickets, BEHAVIOUR, connect_concurrency=count)
        return await _storm(fleet, count)
    finally:
        responder.kill()
        responder.wait()
        broker.close()


async def lockerd_phase(workdir: Path, count: int) -> dict[str, float]:
    broker = new_broker(workdir / "broker")
    service = LockerdProcess(workdir / "lockerd", broker)
    try:
        async with httpx.AsyncClient(timeout=30.0) as http:
            service.start()
            await service.wait_ready(http)
            created = time.monotonic()
            tickets = await create_banks(service.url, ADMIN_TOKEN, count, 4)
            create_seconds = time.monotonic() - created
            link = Link(broker.host, broker.port, "provisioning_client", PROVISIONING_PASSWORD)
            fleet = Fleet(link, tickets, BEHAVIOUR, connect_concurrency=count)
            cpu0 = service.cpu()
            result = await _storm(fleet, count)
            result["cpu_ms_per_provision"] = (service.cpu() - cpu0) / count * 1000
            result["banks_created_per_s"] = count / create_seconds
    finally:
        service.stop()
        broker.close()
    return result


async def run(sizes: dict[str, Any], runs: int, workdir: Path) -> dict[str, Any]:
    count = sizes["devices"]
    results = []
    for index in range(runs):
        run_dir = workdir / f"run{index + 1}"
        await wait_time_wait()
        base = await baseline(run_dir, count)
        await wait_time_wait()
        lk = await lockerd_phase(run_dir, count)
        results.append({"baseline": base, "lockerd": lk})

    def pick(section: str, key: str) -> list[float]:
        return [r[section][key] for r in results]

    figures = {
        "lockerd_provisions_per_s": {"unit": "prov/s", **summary(pick("lockerd", "per_s"))},
        "lockerd_provision_p50_ms": {"unit": "ms", **summary(pick("lockerd", "p50_ms"))},
        "lockerd_provision_p99_ms": {"unit": "ms", **summary(pick("lockerd", "p99_ms"))},
        "lockerd_cpu_ms_per_provision": {
            "unit": "ms",
            **summary(pick("lockerd", "cpu_ms_per_provision")),
        },
        "lockerd_banks_created_per_s": {
            "unit": "banks/s",
            **summary(pick("lockerd", "banks_created_per_s")),
        },
        "baseline_provisions_per_s": {"unit": "prov/s", **summary(pick("baseline", "per_s"))},
        "baseline_provision_p50_ms": {"unit": "ms", **summary(pick("baseline", "p50_ms"))},
        "ratio_lockerd_vs_baseline": {
            "unit": "ratio",
            **summary([r["lockerd"]["per_s"] / r["baseline"]["per_s"] for r in results]),
        },
    }
    retries = [r["lockerd"]["retries"] for r in results]
    return {
        "title": "Provisioning storm",
        "params": {"devices": count, "runs": runs},
        "figures": figures,
        "notes": [
            f"all {count} devices start at once (connect concurrency {count});"
            f" registration retries in the lockerd phase: {retries}",
            "banks_created_per_s: POST /api/admin/locker-banks, 8 concurrent requests",
        ],
        "raw": results,
    }
