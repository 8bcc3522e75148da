"""Recovery: start-to-ready of ``lockerd serve`` with many stored events, with and without
snapshots, against the same banks with an empty history (baseline).

Prepared once: B banks are created through a running service (so every table is as the
service writes it), the service is stopped, and E ``DoorStateChanged`` events per bank are
appended through the event store API (group-committed, projections updated). Three copies:

* ``baseline``: the banks right after creation (2 events each);
* ``no_snapshots``: all events, no snapshot rows;
* ``snapshots``: all events plus, per bank, the snapshot a running service would hold
  (``snapshot_every`` = 100, so at most 99 events of tail).

Per run and variant, on a fresh broker and a fresh copy of the database: spawn -> ``/healthz``
200 ("ready"), then one heartbeat per bank is published and the time until every bank has
processed it is "all loaded" (bank actors start on demand: this is when every bank has
loaded its snapshot and tail).
"""

from __future__ import annotations

import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import trio

from bench.bench_ingest import heartbeats
from bench.common import (
    ADMIN_TOKEN,
    INBOUND,
    LockerdProcess,
    metric,
    new_broker,
    summary,
    wait_metric,
)
from bench.rawmqtt import RawPublisher, publish_burst
from domain import events as e
from domain.bank import fold
from domain.snapshot import encode_snapshot
from domain.state import BankState
from lockerd.banks.projections import PROJECTIONS
from lockerd.device.fleet import create_banks
from store import NewEvent, Snapshot, open_store

VARIANTS = ("baseline", "no_snapshots", "snapshots")
SNAPSHOT_EVERY = 100


def _copy_db(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        src = source.with_name(source.name + suffix)
        if src.exists():
            shutil.copyfile(src, target.with_name(target.name + suffix))


async def prepare(workdir: Path, banks: int, events: int, compartments: int) -> dict[str, Any]:
    broker = new_broker(workdir / "prepare-broker")
    service = LockerdProcess(workdir / "prepare", broker)
    try:
        async with httpx.AsyncClient(timeout=60.0) as http:
            service.start()
            await service.wait_ready(http)
            tickets = await create_banks(service.url, ADMIN_TOKEN, banks, compartments)
    finally:
        service.stop()
        broker.close()
    bank_ids = [t.bank_id for t in tickets if t.bank_id]
    source = service.database
    paths = {variant: workdir / "db" / variant / "lockerd.db" for variant in VARIANTS}
    _copy_db(source, paths["baseline"])

    started = time.monotonic()
    now = datetime.now(UTC)
    async with open_store(f"sqlite:///{source}", PROJECTIONS) as store:

        async def fill(bank_id: str) -> None:
            version = await store.stream_version(bank_id)
            written = 0
            while written < events:
                chunk = []
                for n in range(written, min(events, written + 100)):
                    event = e.DoorStateChanged(
                        compartment_number=(n // 2) % compartments + 1,
                        state="open" if n % 2 == 0 else "closed",
                        at=now,
                        event_id=str(uuid.uuid4()),
                    )
                    chunk.append(NewEvent(e.event_type(event), e.event_data(event)))
                await store.append(bank_id, version, chunk)
                version += len(chunk)
                written += len(chunk)

        send, receive = trio.open_memory_channel[str](len(bank_ids))
        for bank_id in bank_ids:
            send.send_nowait(bank_id)
        send.close()

        async def worker() -> None:
            async for bank_id in receive:
                await fill(bank_id)

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(worker)
    fill_seconds = time.monotonic() - started
    _copy_db(source, paths["no_snapshots"])

    async with open_store(f"sqlite:///{source}", PROJECTIONS) as store:
        for bank_id in bank_ids:
            stored = await store.read_stream(bank_id)
            upto = len(stored) - len(stored) % SNAPSHOT_EVERY
            state = fold(
                BankState(), [e.event_from_stored(ev.type, dict(ev.data)) for ev in stored[:upto]]
            )
            await store.save_snapshot(Snapshot(bank_id, state.version, encode_snapshot(state)))
    _copy_db(source, paths["snapshots"])
    return {
        "bank_ids": bank_ids,
        "paths": paths,
        "fill_seconds": fill_seconds,
        "events": banks * (events + 2),
    }


async def start_once(
    workdir: Path, database: Path, bank_ids: list[str], time_limit: float
) -> dict[str, float]:
    broker = new_broker(workdir / "broker")
    db = workdir / "lockerd.db"
    _copy_db(database, db)
    service = LockerdProcess(workdir / "lockerd", broker, database=db)
    blob = publish_burst(heartbeats(bank_ids, len(bank_ids), 1), qos=1, retain=True)
    try:
        async with httpx.AsyncClient(timeout=30.0) as http:
            spawned = service.start()
            ready = await service.wait_ready(http, time_limit=time_limit)
            labels = {"kind": "state", "outcome": "processed"}
            with RawPublisher(broker.host, broker.port, "bench-recovery") as pub:
                before = await metric(http, service.url, INBOUND, **labels)
                await trio.to_thread.run_sync(pub.send, blob)
                loaded = await wait_metric(
                    http,
                    service.url,
                    INBOUND,
                    before + len(bank_ids),
                    time_limit=time_limit,
                    **labels,
                )
            rss = service.rss()
    finally:
        service.stop()
        broker.close()
    return {
        "ready_s": ready - spawned,
        "all_loaded_s": loaded - spawned,
        "load_s": loaded - ready,
        "rss_mib": rss / 2**20,
    }


async def run(sizes: dict[str, Any], runs: int, workdir: Path) -> dict[str, Any]:
    banks, events, time_limit = sizes["banks"], sizes["events"], sizes["timeout"]
    prepared = await prepare(workdir, banks, events, sizes.get("compartments", 4))
    results: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    for index in range(runs):
        for variant in VARIANTS:  # interleaved, so drift hits all three
            results[variant].append(
                await start_once(
                    workdir / f"run{index + 1}" / variant,
                    prepared["paths"][variant],
                    prepared["bank_ids"],
                    time_limit,
                )
            )

    def pick(variant: str, key: str) -> list[float]:
        return [r[key] for r in results[variant]]

    figures: dict[str, Any] = {}
    for variant in VARIANTS:
        figures[f"{variant}_start_to_ready_s"] = {"unit": "s", **summary(pick(variant, "ready_s"))}
        figures[f"{variant}_start_to_all_loaded_s"] = {
            "unit": "s",
            **summary(pick(variant, "all_loaded_s")),
        }
        figures[f"{variant}_rss_mib"] = {"unit": "MiB", **summary(pick(variant, "rss_mib"))}
    for variant in ("no_snapshots", "snapshots"):
        figures[f"ratio_{variant}_vs_baseline_all_loaded"] = {
            "unit": "ratio",
            **summary(
                [
                    r["all_loaded_s"] / b["all_loaded_s"]
                    for r, b in zip(results[variant], results["baseline"], strict=True)
                ]
            ),
        }
    return {
        "title": "Recovery",
        "params": {"banks": banks, "events_per_bank": events, "runs": runs},
        "figures": figures,
        "notes": [
            f"{prepared['events']} stored events in all; filling them through the store API"
            f" took {prepared['fill_seconds']:.1f} s"
            f" ({prepared['events'] / max(prepared['fill_seconds'], 1e-9):.0f} events/s)",
            "bank actors load on demand: 'ready' is /healthz answering, 'all loaded' is every"
            " bank having processed one heartbeat after the start",
        ],
        "raw": results,
    }
