"""The fault and fuzz suite of ``tests/faults``, run long, with figures for docs/benchmarks.md.

    python bench/faults.py --duration 120                       # SQLite (and PostgreSQL if
    LOCKERD_TEST_POSTGRES_URL=postgresql://... python bench/faults.py --duration 600   # set)
    python bench/faults.py --duration 60 --only http,kill9 --out /tmp/faults.json

Per store, the duration is split evenly between four parts, each the CI test's scenario with
bigger numbers (:mod:`tests.faults.fuzzing`, :mod:`tests.faults.scenarios`):

* ``http``: schemathesis over ``/openapi.json`` against an in-process lockerd, runs repeated
  (not derandomized, so each explores further) until the part's time is up: requests sent,
  answers by status, 5xx, bank actor restarts.
* ``mqtt``: hypothesis-generated malformed MQTT messages of every topic family through a real
  broker, checked batch by batch (counted once, nothing changed, no crash).
* ``kill9``: ``lockerd serve`` killed with SIGKILL every few seconds under 20 opens/s with a
  device answering: lost, duplicated terminal events, stuck pending, answered-but-timeout. Its
  baseline is the same service's first start: the restart time after a kill -9 is reported as
  a ratio to it.
* ``broker``: the broker restarted every few seconds under 100 events/s and 100 metric
  points/s: lost, duplicated, counts.

Prints a Markdown section (the "Faults and fuzzing" section of docs/benchmarks.md) and writes
the figures as JSON (``--out``). Exit status 1 if any rule was broken.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import trio  # noqa: E402

from lockerd.logging import configure_logging  # noqa: E402
from tests.faults.conftest import settings_for  # noqa: E402
from tests.faults.fuzzing import run_http_fuzz, run_mqtt_fuzz  # noqa: E402
from tests.faults.scenarios import (  # noqa: E402
    ServeProcess,
    broker_restart_under_load,
    kill9_under_opens,
)
from tests.support.mosquitto import MosquittoBroker  # noqa: E402
from tests.support.postgres import server_url  # noqa: E402
from tests.support.service import database_url_for, lockerd  # noqa: E402

PARTS = ("http", "mqtt", "kill9", "broker")
SECONDS_BETWEEN_KILLS = 3.0
SECONDS_BETWEEN_BROKER_RESTARTS = 3.0


def log(text: str) -> None:
    print(f"[faults {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def http_part(workdir: Path, store: str, seconds: float) -> dict[str, Any]:
    totals: dict[str, Any] = {"runs": 0, "requests": 0, "by_status": {}, "server_errors": []}
    deadline = time.monotonic() + seconds
    with MosquittoBroker(workdir / "broker-http") as broker:
        async with lockerd(settings_for(broker, workdir / "http", store)) as svc:
            while time.monotonic() < deadline:
                report = await run_http_fuzz(svc, examples=25, derandomize=False)
                totals["runs"] += 1
                totals["requests"] += report.sent
                for status, count in report.by_status.items():
                    totals["by_status"][status] = totals["by_status"].get(status, 0) + count
                totals["server_errors"].extend(report.server_errors[:5])
                log(f"{store} http run {totals['runs']}: {totals['requests']} requests so far")
            totals["bank_actor_restarts"] = sum(
                s.restarts for s in svc.context.fleet.banks.values()
            )
    totals["5xx"] = sum(n for status, n in totals["by_status"].items() if status >= 500)
    totals["by_status"] = dict(sorted(totals["by_status"].items()))
    totals["ok"] = totals["5xx"] == 0 and totals["bank_actor_restarts"] == 0
    return totals


async def mqtt_part(workdir: Path, store: str, seconds: float) -> dict[str, Any]:
    totals: dict[str, Any] = {"runs": 0, "batches": 0, "malformed": 0, "well_formed": 0}
    mutations: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    failure: str | None = None
    with MosquittoBroker(workdir / "broker-mqtt") as broker:
        settings = settings_for(broker, workdir / "mqtt", store, LOCKERD_COMMAND_TIMEOUT="3600")
        async with lockerd(settings) as svc:
            while time.monotonic() < deadline and failure is None:
                try:
                    report = await run_mqtt_fuzz(svc, broker.url, batches=50, batch_size=200)
                except AssertionError as exc:
                    failure = str(exc)[:500]
                    break
                totals["runs"] += 1
                totals["batches"] += report.batches
                totals["malformed"] += report.malformed_sent
                totals["well_formed"] += report.well_formed_sent
                for what, count in report.by_mutation.items():
                    mutations[what] = mutations.get(what, 0) + count
                log(f"{store} mqtt run {totals['runs']}: {totals['malformed']} malformed so far")
            restarts = svc.context.metrics.registry.get_sample_value(
                "lockerd_actor_restarts_total", {"actor": "bank"}
            )
    totals["by_mutation"] = dict(sorted(mutations.items()))
    totals["bank_actor_restarts"] = int(restarts or 0)
    totals["violation"] = failure
    totals["ok"] = failure is None and not restarts
    return totals


async def kill9_part(workdir: Path, store: str, seconds: float) -> dict[str, Any]:
    restarts = max(1, int(seconds / (SECONDS_BETWEEN_KILLS + 2.0)))
    url = database_url_for(workdir / "kill9", store)
    with MosquittoBroker(workdir / "broker-kill9") as broker:
        # baseline: the same service's cold start to /healthz 200, on an empty database
        base = ServeProcess(
            workdir / "kill9-baseline", broker, database_url_for(workdir / "kill9-baseline", store)
        )
        async with httpx.AsyncClient(timeout=5.0) as http:
            started = time.monotonic()
            base.start()
            await base.wait_healthy(http)
            cold_start = time.monotonic() - started
            await trio.to_thread.run_sync(base.stop)
        restart_times: list[float] = []
        report = await kill9_under_opens(
            broker,
            workdir / "kill9",
            url,
            restarts=restarts,
            opens_per_second=20.0,
            seconds_between_kills=SECONDS_BETWEEN_KILLS,
            progress=log,
            restart_times=restart_times,
        )
    figures = report.as_json()
    figures["cold_start_seconds"] = round(cold_start, 3)
    figures["restart_after_kill9_seconds_median"] = round(
        sorted(restart_times)[len(restart_times) // 2], 3
    )
    figures["ratio_restart_vs_cold_start"] = round(
        figures["restart_after_kill9_seconds_median"] / cold_start, 2
    )
    figures["ok"] = not (
        report.lost or report.duplicated or report.stuck or report.answered_but_timeout
    )
    return figures


async def broker_part(workdir: Path, store: str, seconds: float) -> dict[str, Any]:
    restarts = max(1, int(seconds / (SECONDS_BETWEEN_BROKER_RESTARTS + 1.0)))
    with MosquittoBroker(workdir / "broker-restart") as broker:
        async with lockerd(settings_for(broker, workdir / "broker", store)) as svc:
            report = await broker_restart_under_load(
                svc,
                broker,
                restarts=restarts,
                messages_per_second=100.0,
                seconds_between_restarts=SECONDS_BETWEEN_BROKER_RESTARTS,
                progress=log,
            )
    figures = report.as_json()
    figures["ok"] = (
        report.events_lost == 0
        and report.events_duplicated == 0
        and report.points_lost == 0
        and report.reconnected
        and report.inbound_processed.get("event") == report.events_sent
        and report.inbound_processed.get("metric") == report.points_sent
    )
    return figures


PART_RUNNERS: dict[str, Callable[[Path, str, float], Awaitable[dict[str, Any]]]] = {
    "http": http_part,
    "mqtt": mqtt_part,
    "kill9": kill9_part,
    "broker": broker_part,
}


async def run(
    stores: list[str], parts: list[str], duration: float, workdir: Path
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    seconds = duration / len(parts)
    for store in stores:
        results[store] = {}
        for part in parts:
            log(f"{store}: {part} for about {seconds:.0f} s")
            started = time.monotonic()
            partdir = workdir / store / part
            for sub in ("", "http", "mqtt", "broker", "kill9", "kill9-baseline"):
                (partdir / sub).mkdir(parents=True, exist_ok=True)
            try:
                figures = await PART_RUNNERS[part](partdir, store, seconds)
            except Exception:  # a broken part is reported, the others still run
                figures = {"ok": False, "error": traceback.format_exc(limit=8)[-2000:]}
            figures["seconds"] = round(time.monotonic() - started, 1)
            results[store][part] = figures
    return results


def markdown(results: dict[str, Any], duration: float) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "## Faults and fuzzing (`bench/faults.py`)",
        "",
        f"`python bench/faults.py --duration {duration:g}` on commit {commit},"
        f" {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())};"
        " 2 vCPU shared with other engineers' work (timings are indicative only; the counts"
        " are what matters). The same scenarios run bounded in CI (`tests/faults`).",
        "",
        "| store | part | what was done | 5xx / crashes | lost | duplicated | stuck | answered"
        " but timeout | ok |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for store, parts in results.items():
        for part, f in parts.items():
            if "error" in f:
                lines.append(
                    f"| {store} | {part} | error: {f['error'].splitlines()[-1]} | | | | | | no |"
                )
                continue
            ok = "yes" if f["ok"] else "**no**"
            if part == "http":
                statuses = ", ".join(f"{s}: {n}" for s, n in f["by_status"].items())
                lines.append(
                    f"| {store} | schemathesis | {f['requests']:,} requests in {f['runs']} runs"
                    f" ({statuses}) | {f['5xx']} / {f['bank_actor_restarts']} | | | | | {ok} |"
                )
            elif part == "mqtt":
                lines.append(
                    f"| {store} | MQTT fuzz | {f['malformed']:,} malformed messages"
                    f" ({len(f['by_mutation'])} kinds of mutation) and {f['well_formed']:,}"
                    f" heartbeats in {f['batches']} checked batches; each counted once, nothing"
                    f" changed{'' if f['violation'] is None else ': ' + f['violation']}"
                    f" | - / {f['bank_actor_restarts']} | | | | | {ok} |"
                )
            elif part == "kill9":
                lines.append(
                    f"| {store} | kill -9 | {f['restarts']} kills under 20 opens/s:"
                    f" {f['opens_sent']:,} opens sent, {f['accepted']:,} accepted,"
                    f" {f['answered']:,} answered by the device, outcomes {f['outcomes']};"
                    f" restart after kill -9 {f['restart_after_kill9_seconds_median']} s ="
                    f" {f['ratio_restart_vs_cold_start']} x a cold start"
                    f" | - | {f['lost']} | {f['duplicated_terminal_events']}"
                    f" | {f['stuck_pending']} | {f['answered_but_timeout']}"
                    f" ({f['of_which_late_answers']} late) | {ok} |"
                )
            else:
                lines.append(
                    f"| {store} | broker restart | {f['restarts']} restarts under 100 events/s"
                    f" + 100 points/s: {f['events_sent']:,} events, {f['points_sent']:,} points;"
                    f" inbound processed {f['inbound_processed']}, dropped (redelivered"
                    f" duplicates) {f['inbound_dropped']} | - | {f['events_lost']} events,"
                    f" {f['points_lost']} points | {f['events_duplicated']} | | | {ok} |"
                )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds per store")
    parser.add_argument("--only", default=",".join(PARTS), help=f"parts: {','.join(PARTS)}")
    parser.add_argument("--stores", default=None, help="sqlite,postgresql (default: what is set)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument("--log-level", default="error", help="of the in-process lockerd")
    args = parser.parse_args()
    configure_logging("console", args.log_level)  # stdout is for the Markdown section
    parts = [p for p in args.only.split(",") if p]
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    stores = (
        args.stores.split(",")
        if args.stores
        else ["sqlite", *(["postgresql"] if server_url() else [])]
    )
    with tempfile.TemporaryDirectory(prefix="lockerd-faults-") as tmp:
        results = trio.run(run, stores, parts, args.duration, Path(tmp))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(markdown(results, args.duration))
    return 0 if all(f.get("ok") for parts_ in results.values() for f in parts_.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
