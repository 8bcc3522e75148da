"""Heartbeat ingestion: heartbeats/s fully processed by lockerd vs a bare paho subscriber.

Per run, on a fresh broker:

1. **Baseline.** ``bench/paho_sub.py`` (bare paho, own process, QoS 1 on ``locker/+/state``)
   receives N heartbeats from the raw publisher. Rate = N / (last arrival - publish start).
2. **lockerd.** ``lockerd serve`` (child process) with M banks created through the admin API;
   one warm-up heartbeat per bank (loads every bank actor, brings it online); then the same
   N heartbeats. Rate = N / (time /metrics shows ``lockerd_inbound_messages_total{kind="state",
   outcome="processed"}`` grown by N - publish start). CPU per message from /proc.

Heartbeats are retained and QoS 1, as devices send them, to M bank topics round robin with
increasing uptimes (so no ``DeviceRebooted``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.common import (
    ADMIN_TOKEN,
    INBOUND,
    LockerdProcess,
    broker_cpu,
    metric,
    new_broker,
    summary,
    wait_metric,
)
from bench.profiling import PySpy
from bench.rawmqtt import RawPublisher, publish_burst
from lockerd.device.fleet import create_banks
from lockerd.device.protocol import heartbeat_payload, state_topic

BENCH_DIR = Path(__file__).resolve().parent
NOW = time.time()


def heartbeats(bank_ids: list[str], count: int, uptime_base: int) -> list[tuple[str, bytes]]:
    from datetime import UTC, datetime

    moment = datetime.fromtimestamp(NOW, UTC)
    topics = [state_topic(bank) for bank in bank_ids]
    out = []
    for index in range(count):
        bank = index % len(topics)
        uptime = uptime_base + index // len(topics)
        out.append((topics[bank], heartbeat_payload("bench-session", uptime, moment)))
    return out


async def baseline(
    host: str, port: int, banks: int, count: int, time_limit: float
) -> dict[str, float]:
    ids = [str(uuid.uuid4()) for _ in range(banks)]
    blob = publish_burst(heartbeats(ids, count, 1), qos=1, retain=True)
    sub = subprocess.Popen(  # noqa: ASYNC220 - starting a process does not block
        [
            sys.executable,
            str(BENCH_DIR / "paho_sub.py"),
            host,
            str(port),
            "locker/+/state",
            "1",
            str(count),
            str(time_limit),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sub.stdout is not None
        line = await trio.to_thread.run_sync(sub.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"baseline subscriber did not start: {line!r}")
        with RawPublisher(host, port, f"bench-pub-{uuid.uuid4().hex[:6]}") as pub:
            started = time.monotonic()
            await trio.to_thread.run_sync(pub.send, blob)
            out = await trio.to_thread.run_sync(sub.stdout.readline)
        await trio.to_thread.run_sync(sub.wait, time_limit)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    result = json.loads(out)
    if result["received"] < count:
        raise RuntimeError(f"baseline subscriber got {result['received']} of {count}")
    elapsed = result["last"] - started
    return {
        "rate": count / elapsed,
        "cpu_us_per_msg": result["cpu_seconds"] / count * 1e6,
        "seconds": elapsed,
    }


async def lockerd_run(
    workdir: Path,
    broker_host: str,
    broker_port: int,
    broker: Any,
    banks: int,
    count: int,
    time_limit: float,
    profile_to: Path | None = None,
) -> dict[str, float]:
    service = LockerdProcess(workdir / "lockerd", broker, log_level="info")
    async with httpx.AsyncClient(timeout=30.0) as http:
        service.start()
        try:
            await service.wait_ready(http)
            tickets = await create_banks(
                service.url, ADMIN_TOKEN, banks, 1, heartbeat_interval_seconds=3600
            )
            ids = [t.bank_id for t in tickets if t.bank_id]
            warm = publish_burst(heartbeats(ids, len(ids), 1), qos=1, retain=True)
            burst = publish_burst(heartbeats(ids, count, 2), qos=1, retain=True)
            labels = {"kind": "state", "outcome": "processed"}
            with RawPublisher(broker_host, broker_port, "bench-pub-lockerd") as pub:
                base = await metric(http, service.url, INBOUND, **labels)
                await trio.to_thread.run_sync(pub.send, warm)
                await wait_metric(
                    http, service.url, INBOUND, base + len(ids), time_limit=time_limit, **labels
                )
                before = await metric(http, service.url, INBOUND, **labels)
                dropped_before = await metric(
                    http, service.url, INBOUND, kind="state", outcome="dropped"
                )
                spy = PySpy(service.pid, profile_to) if profile_to is not None else None
                if spy is not None:
                    spy.start()
                cpu0, bcpu0 = service.cpu(), broker_cpu(broker)
                started = time.monotonic()
                await trio.to_thread.run_sync(pub.send, burst)
                seen = await wait_metric(
                    http, service.url, INBOUND, before + count, time_limit=time_limit, **labels
                )
                cpu1, bcpu1 = service.cpu(), broker_cpu(broker)
                if spy is not None:
                    spy.stop()
                dropped = (
                    await metric(http, service.url, INBOUND, kind="state", outcome="dropped")
                    - dropped_before
                )
            rss = service.rss()
        finally:
            service.stop()
    elapsed = seen - started
    return {
        "rate": count / elapsed,
        "cpu_us_per_msg": (cpu1 - cpu0) / count * 1e6,
        "broker_cpu_us_per_msg": (bcpu1 - bcpu0) / count * 1e6,
        "seconds": elapsed,
        "rss_mib": rss / 2**20,
        "dropped": dropped,
    }


async def one_run(
    workdir: Path, banks: int, count: int, time_limit: float, profile_to: Path | None = None
) -> dict[str, Any]:
    broker = new_broker(workdir / "broker")
    try:
        base = await baseline(broker.host, broker.port, banks, count, time_limit)
        lk = await lockerd_run(
            workdir, broker.host, broker.port, broker, banks, count, time_limit, profile_to
        )
    finally:
        broker.close()
    return {"baseline": base, "lockerd": lk}


async def run(sizes: dict[str, Any], runs: int, workdir: Path) -> dict[str, Any]:
    banks, count, time_limit = sizes["banks"], sizes["heartbeats"], sizes["timeout"]
    results = []
    for index in range(runs):
        results.append(await one_run(workdir / f"run{index + 1}", banks, count, time_limit))
    lk = [r["lockerd"] for r in results]
    bl = [r["baseline"] for r in results]
    figures = {
        "lockerd_heartbeats_per_s": {"unit": "msg/s", **summary([r["rate"] for r in lk])},
        "baseline_paho_heartbeats_per_s": {"unit": "msg/s", **summary([r["rate"] for r in bl])},
        "ratio_lockerd_vs_baseline": {
            "unit": "ratio",
            **summary([r["lockerd"]["rate"] / r["baseline"]["rate"] for r in results]),
        },
        "lockerd_cpu_us_per_heartbeat": {
            "unit": "µs",
            **summary([r["cpu_us_per_msg"] for r in lk]),
        },
        "baseline_paho_cpu_us_per_heartbeat": {
            "unit": "µs",
            **summary([r["cpu_us_per_msg"] for r in bl]),
        },
        "broker_cpu_us_per_heartbeat": {
            "unit": "µs",
            **summary([r["broker_cpu_us_per_msg"] for r in lk]),
        },
        "lockerd_rss_mib": {"unit": "MiB", **summary([r["rss_mib"] for r in lk])},
    }
    notes = [f"target ratio >= 0.5; {banks} banks, {count} heartbeats per run (QoS 1, retained)"]
    if any(r["dropped"] for r in lk):
        notes.append(f"dropped heartbeats per run: {[r['dropped'] for r in lk]}")
    return {
        "title": "Heartbeat ingestion",
        "params": {"banks": banks, "heartbeats": count, "runs": runs},
        "figures": figures,
        "notes": notes,
        "raw": results,
    }
