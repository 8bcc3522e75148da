"""The citizen app's open path under load (issue 15), against ``lockerd serve`` as a child.

    python bench/bench_app.py                 # full sizes
    python bench/bench_app.py --smoke         # tiny sizes: every figure, a few seconds
    python bench/bench_app.py --profile DIR   # py-spy the lockerd child in the closed loop

Layout: lockerd (one core, ``taskset -c 0``) against its own Mosquitto; the benchmark (load
generator, simulated devices) and the broker on the other core. One user with a grant on
every compartment (4 banks of 8), devices that answer at once (doors open for 100 ms).

Phases, each bounded in time:

* **HTTP floor**, W closed-loop workers over keep-alive connections (bench/rawhttp.py, so the
  client costs almost nothing): a bare Hypercorn ASGI app (no framework: the transport's
  cost), lockerd's ``GET /healthz`` and lockerd's open route (``POST …/open``, each followed
  by one ``?wait=`` GET so the compartment is free again);
* **poll**: opens offered at a fixed rate (open loop, one every 1/rate s over 20
  compartments), each followed by ``GET /api/transactions/{id}`` every 2 ms until it is no
  longer pending (what the issue's app did);
* **closed**: 32 workers, each on its own compartment, open → poll every 2 ms → open again;
* **wait**: the same offered rate, each open followed by one ``GET …?wait=30``;
* **ws**: the same offered rate, the outcome taken from the user's ``/ws/app`` stream.

Round trip = from sending the POST to seeing the final status. Reported: achieved opens/s,
p50/p99, lockerd's CPU per open, and the ratios to the baselines of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import trio  # noqa: E402
from trio_websocket import open_websocket_url  # noqa: E402

from bench.common import (  # noqa: E402
    ADMIN_TOKEN,
    PROVISIONING_PASSWORD,
    LockerdProcess,
    OtherLoad,
    admin_headers,
    new_broker,
    percentile,
    summary,
)
from bench.profiling import PySpy, available, breakdown, summarize  # noqa: E402
from bench.rawhttp import RawHttp  # noqa: E402
from lockerd.device.fleet import Fleet, create_banks  # noqa: E402
from lockerd.device.simulated import Behaviour, Delay, Link  # noqa: E402
from tests.support.mosquitto import free_port  # noqa: E402

WAIT = 30.0
BEHAVIOUR = Behaviour(door_open=Delay.fixed(0.1), heartbeat_interval=10.0)
PASSWORD = "bench-password-1"
SERVER_CPU = "0"
CLIENT_CPU = "1"

FULL: dict[str, Any] = {
    "banks": 4,
    "compartments": 8,
    "offered_compartments": 20,
    "rate": 100.0,
    "workers": 32,
    "seconds": 10.0,
    "http_seconds": 4.0,
    "poll_interval": 0.002,
}
SMOKE: dict[str, Any] = {**FULL, "seconds": 1.0, "http_seconds": 0.5, "rate": 20.0}

BARE_SERVER = '''
"""A bare ASGI app on Hypercorn (trio worker), bound like lockerd binds (TCP_NODELAY)."""
import socket, sys
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b'{"status":"ok"}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen(1024)
config = Config()
config.bind = [f"fd://{sock.detach()}"]
config.accesslog = None
config.errorlog = None
trio.run(serve, app, config)
'''


def open_profile_path(profile_to: Path) -> Path:
    """Where the profile of the open-route phase goes, beside the closed loop's."""
    return profile_to.with_name(f"{profile_to.stem}-open{profile_to.suffix}")


def pinned(command: list[str], cpus: str) -> list[str]:
    taskset = shutil.which("taskset")
    return [taskset, "-c", cpus, *command] if taskset and (os.cpu_count() or 1) > 1 else command


def pin_self(cpus: str) -> None:
    if (os.cpu_count() or 1) > 1 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def figures(latencies: list[float], elapsed: float, **extra: Any) -> dict[str, Any]:
    return {
        "per_s": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "count": len(latencies),
        **extra,
    }


class Pool:
    """Keep-alive connections, one per request in flight."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        self.base = base
        self.headers = headers
        self._idle: list[RawHttp] = []

    async def take(self) -> RawHttp:
        if self._idle:
            return self._idle.pop()
        connection = RawHttp(self.base, self.headers)
        await connection.connect()
        return connection

    def give(self, connection: RawHttp) -> None:
        self._idle.append(connection)

    async def close(self) -> None:
        for connection in self._idle:
            await connection.aclose()
        self._idle.clear()


async def closed_loop(
    workers: int, seconds: float, one: Callable[[int], Awaitable[float | None]]
) -> dict[str, Any]:
    """``workers`` tasks calling ``one(index)`` back to back; its result is a latency."""
    latencies: list[float] = []
    failures = [0]
    deadline = time.monotonic() + seconds

    async def worker(index: int) -> None:
        while time.monotonic() < deadline:
            latency = await one(index)
            if latency is None:
                failures[0] += 1
            else:
                latencies.append(latency)

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for index in range(workers):
            nursery.start_soon(worker, index)
    return figures(latencies, time.monotonic() - started, failures=failures[0])


async def open_loop(
    rate: float, seconds: float, slots: int, one: Callable[[int], Awaitable[float | None]]
) -> dict[str, Any]:
    """Start ``one(slot)`` every 1/rate s (slots round robin; a slot still busy is skipped and
    counted as not offered); wait for all to finish."""
    latencies: list[float] = []
    busy: set[int] = set()
    outcome: Counter[str] = Counter()

    async def run(slot: int) -> None:
        try:
            latency = await one(slot)
        finally:
            busy.discard(slot)
        if latency is None:
            outcome["failed"] += 1
        else:
            latencies.append(latency)

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for n in range(int(rate * seconds)):
            # the arrival schedule of an open loop: one start every 1/rate s
            await trio.sleep(max(0.0, started + n / rate - time.monotonic()))
            slot = n % slots
            if slot in busy:
                outcome["skipped_busy"] += 1
                continue
            busy.add(slot)
            outcome["offered"] += 1
            nursery.start_soon(run, slot)
    elapsed = time.monotonic() - started
    return figures(latencies, elapsed, offered_per_s=rate, **dict(outcome))


# ---------------------------------------------------------------------------------- baselines


async def bare_hypercorn(workdir: Path, workers: int, seconds: float) -> dict[str, Any]:
    """Requests/s of an ASGI app that does nothing, served by Hypercorn (trio worker)."""
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - set-up, before timing
    (workdir / "bare_server.py").write_text(BARE_SERVER)
    port = free_port()
    command = pinned([sys.executable, "bare_server.py", str(port)], SERVER_CPU)
    process = subprocess.Popen(  # noqa: ASYNC220 - a child that runs beside the benchmark
        command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            with trio.fail_after(30):
                while True:
                    try:
                        if (await http.get(base, timeout=1)).status_code == 200:
                            break
                    except httpx.TransportError:
                        await trio.sleep(0.05)  # an external process starting up
        return await http_loop(base, {}, "/", workers, seconds)
    finally:
        process.terminate()
        process.wait(10)


async def http_loop(
    base: str, headers: dict[str, str], path: str, workers: int, seconds: float
) -> dict[str, Any]:
    connections = [RawHttp(base, headers) for _ in range(workers)]
    for connection in connections:
        await connection.connect()

    async def one(index: int) -> float | None:
        started = time.monotonic()
        response = await connections[index].get(path)
        return time.monotonic() - started if response.status == 200 else None

    try:
        return await closed_loop(workers, seconds, one)
    finally:
        for connection in connections:
            await connection.aclose()


# ---------------------------------------------------------------------------------- lockerd


class Setup:
    def __init__(self, base: str, token: str, compartments: list[str], fleet: Fleet) -> None:
        self.base = base
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}
        self.compartments = compartments
        self.fleet = fleet
        self.pool = Pool(base, self.headers)


last_transaction = [""]


async def open_then(
    setup: Setup, compartment_id: str, settle: Callable[[RawHttp, str], Awaitable[str]]
) -> float | None:
    connection = await setup.pool.take()
    try:
        started = time.monotonic()
        response = await connection.post(f"/api/compartments/{compartment_id}/open")
        if response.status != 202:
            return None
        last_transaction[0] = response.json()["transaction_id"]
        status = await settle(connection, last_transaction[0])
        return time.monotonic() - started if status == "success" else None
    finally:
        setup.pool.give(connection)


POLLS = [0]


def polling(interval: float) -> Callable[[RawHttp, str], Awaitable[str]]:
    async def settle(connection: RawHttp, transaction_id: str) -> str:
        with trio.fail_after(WAIT):
            while True:
                POLLS[0] += 1
                status = (await connection.get(f"/api/transactions/{transaction_id}")).json()[
                    "status"
                ]
                if status != "pending":
                    return str(status)
                await trio.sleep(interval)  # the app's polling interval: part of the scenario

    return settle


async def long_poll(connection: RawHttp, transaction_id: str) -> str:
    with trio.fail_after(WAIT):
        while True:
            view = (await connection.get(f"/api/transactions/{transaction_id}?wait=30")).json()
            if view["status"] != "pending":
                return str(view["status"])


class AppStream:
    """The user's /ws/app stream: final statuses by transaction id, as they arrive."""

    def __init__(self) -> None:
        self.final: dict[str, str] = {}
        self._waiters: dict[str, trio.Event] = {}

    async def run(self, url: str, *, task_status: trio.TaskStatus[None]) -> None:
        async with open_websocket_url(url, message_queue_size=10_000) as ws:
            await ws.get_message()  # the snapshot
            task_status.started()
            while True:
                message = json.loads(await ws.get_message())
                if message["type"] != "transaction":
                    continue
                view = message["transaction"]
                if view["status"] != "pending":
                    self.final[view["transaction_id"]] = view["status"]
                    waiter = self._waiters.pop(view["transaction_id"], None)
                    if waiter is not None:
                        waiter.set()

    async def settle(self, connection: RawHttp, transaction_id: str) -> str:
        del connection
        if transaction_id not in self.final:
            waiter = self._waiters.setdefault(transaction_id, trio.Event())
            with trio.fail_after(WAIT):
                await waiter.wait()
        return self.final.pop(transaction_id)


async def prepare(base: str, broker: Any, sizes: dict[str, Any], nursery: trio.Nursery) -> Setup:
    tickets = await create_banks(base, ADMIN_TOKEN, sizes["banks"], sizes["compartments"])
    link = Link(broker.host, broker.port, "provisioning_client", PROVISIONING_PASSWORD)
    fleet = Fleet(link, tickets, BEHAVIOUR, seed=3)
    await nursery.start(fleet.run)
    with trio.fail_after(WAIT * 2):
        await fleet.wait_online()
    async with httpx.AsyncClient(base_url=base, timeout=WAIT) as http:
        with trio.move_on_after(WAIT):
            while True:
                banks = (await http.get("/api/admin/locker-banks", headers=admin_headers())).json()
                if all(b["presence"] == "online" for b in banks):
                    break
                await trio.sleep(0.05)  # state behind the HTTP API
        if not all(b["presence"] == "online" for b in banks):
            raise RuntimeError(f"banks not online: {[b['presence'] for b in banks]}")
        created = await http.post(
            "/api/admin/users",
            json={"email": "bench@example.org", "password": PASSWORD, "name": "Bench"},
            headers=admin_headers(),
        )
        user_id = created.json()["id"]
        compartments = [cid for ticket in tickets for cid in ticket.compartment_ids]
        for cid in compartments:
            granted = await http.post(
                f"/api/admin/compartments/{cid}/grants",
                json={"user_id": user_id},
                headers=admin_headers(),
            )
            assert granted.status_code == 201, granted.text
        login = await http.post(
            "/api/login", json={"email": "bench@example.org", "password": PASSWORD}
        )
        token = login.json()["token"]
    # interleave banks, so that consecutive opens go to different banks
    by_bank = [ticket.compartment_ids for ticket in tickets]
    ordered = [ids[i] for i in range(sizes["compartments"]) for ids in by_bank]
    return Setup(base, token, ordered, fleet)


async def lockerd_phases(
    workdir: Path, sizes: dict[str, Any], profile_to: Path | None
) -> dict[str, Any]:
    profile_open = None if profile_to is None else open_profile_path(profile_to)
    broker = new_broker(workdir / "broker")
    service = LockerdProcess(workdir / "lockerd", broker, log_level="warning")
    if sizes.get("before"):  # the same benchmark against another checkout (--before)
        source = str(sizes["before"])
        start = f"import sys; sys.path.insert(0, {source!r}); from lockerd.cli import main; main()"
        service.command = [sys.executable, "-c", start, "serve"]
    if os.environ.get("BENCH_APP_LOCKERD"):  # an instrumented lockerd (experiments)
        service.command = [sys.executable, os.environ["BENCH_APP_LOCKERD"], "serve"]
    service.command = pinned(service.command, SERVER_CPU)
    results: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(timeout=WAIT) as http:
            service.start()
            await service.wait_ready(http)
            if sizes.get("before"):  # make sure it is the other code that answers
                me = await http.get(f"{service.url}/api/me")
                assert me.status_code == 404, "--before: this lockerd has /api/me"
        async with trio.open_nursery() as nursery:
            setup = await prepare(service.url, broker, sizes, nursery)
            workers, seconds, rate = sizes["workers"], sizes["seconds"], sizes["rate"]
            offered = setup.compartments[: sizes["offered_compartments"]]
            poll = polling(sizes["poll_interval"])

            results["healthz"] = await http_loop(
                setup.base, {}, "/healthz", workers, sizes["http_seconds"]
            )

            # a lockerd from before issue 15 (--before) has neither ?wait= nor /ws/app
            before = bool(sizes.get("before"))
            settle_route = poll if before else long_poll

            async def open_route(index: int) -> float | None:
                return await open_then(setup, setup.compartments[index], settle_route)

            # warm-up, then the open route (one POST and one long poll per open)
            await closed_loop(workers, min(1.0, sizes["http_seconds"]), open_route)
            cpu0 = service.cpu()
            spy = PySpy(service.pid, profile_open) if profile_open is not None else None
            if spy is not None:
                spy.start()
            results["open_route"] = await closed_loop(workers, sizes["http_seconds"], open_route)
            if spy is not None:
                spy.stop()
            results["open_route"]["cpu_ms_per_open"] = (
                (service.cpu() - cpu0) / max(1, results["open_route"]["count"]) * 1000
            )

            async def one_idle(index: int) -> float | None:
                return await open_then(setup, offered[index % len(offered)], poll)

            results["idle_poll"] = await closed_loop(1, min(3.0, seconds), one_idle)
            # a hot read: GET of a finished transaction, as a poll is once it is done
            done = await open_then(setup, offered[0], settle_route)
            assert done is not None
            last = await setup.pool.take()
            finished = (await last.get(f"/api/transactions/{last_transaction[0]}")).json()
            setup.pool.give(last)
            assert finished["status"] == "success", finished
            results["transaction_get"] = await http_loop(
                setup.base, setup.headers, f"/api/transactions/{last_transaction[0]}",
                workers, sizes["http_seconds"],
            )  # fmt: skip

            async def measured(name: str, run: Callable[[], Awaitable[dict[str, Any]]]) -> None:
                cpu0 = service.cpu()
                POLLS[0] = 0
                figures = await run()
                cpu = service.cpu() - cpu0
                figures["cpu_ms_per_open"] = cpu / max(1, figures["count"]) * 1000
                figures["polls_per_open"] = POLLS[0] / max(1, figures["count"])
                results[name] = figures

            stream = AppStream()

            async def poll_open(slot: int) -> float | None:
                return await open_then(setup, offered[slot], poll)

            async def poll_worker(index: int) -> float | None:
                return await open_then(setup, setup.compartments[index], poll)

            async def wait_open(slot: int) -> float | None:
                return await open_then(setup, offered[slot], long_poll)

            async def ws_open(slot: int) -> float | None:
                return await open_then(setup, offered[slot], stream.settle)

            await measured("poll", lambda: open_loop(rate, seconds, len(offered), poll_open))
            spy = PySpy(service.pid, profile_to) if profile_to is not None else None
            if spy is not None:
                spy.start()
            await measured("closed", lambda: closed_loop(workers, seconds, poll_worker))
            if spy is not None:
                spy.stop()
            if not before:
                await measured("wait", lambda: open_loop(rate, seconds, len(offered), wait_open))
                ws_url = setup.base.replace("http://", "ws://") + f"/ws/app?token={setup.token}"
                await nursery.start(stream.run, ws_url)
                await measured("ws", lambda: open_loop(rate, seconds, len(offered), ws_open))
            await setup.pool.close()
            await setup.fleet.stop()
            nursery.cancel_scope.cancel()
        results["rss_mib"] = service.rss() / 2**20
    finally:
        service.stop()
        broker.close()
    return results


async def one_run(workdir: Path, sizes: dict[str, Any], profile_to: Path | None) -> dict[str, Any]:
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh database every run
    other = OtherLoad()
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(other.run)
        bare = await bare_hypercorn(workdir / "bare", sizes["workers"], sizes["http_seconds"])
        lockerd = await lockerd_phases(workdir, sizes, profile_to)
        nursery.cancel_scope.cancel()
    busy = other.cpu_seconds / (time.monotonic() - started)
    return {"bare_hypercorn": bare, **lockerd, "other_cores_busy": busy}


async def run(
    sizes: dict[str, Any], runs: int, workdir: Path, profile_to: Path | None = None
) -> dict[str, Any]:
    """All phases ``runs`` times; the report in bench/run.py's shape (title, figures, notes).

    This process (the load and the devices) runs on CLIENT_CPU meanwhile, lockerd on
    SERVER_CPU; the previous affinity is restored afterwards.
    """
    previous = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    pin_self(CLIENT_CPU)
    try:
        results = [
            await one_run(workdir / f"run{n + 1}", sizes, profile_to if n == 0 else None)
            for n in range(runs)
        ]
    finally:
        if previous is not None:
            os.sched_setaffinity(0, previous)
    out = report(results, sizes)
    if profile_to is not None:
        for name, path in (
            ("closed_loop", profile_to),
            ("open_route", open_profile_path(profile_to)),
        ):
            out[f"profile_{name}"] = {
                **summarize(path),
                "tasks": breakdown(path, "unrolled_run"),
                "bank_actor": breakdown(path, "BankActor._handle"),
            }
    return out


def report(results: list[dict[str, Any]], sizes: dict[str, Any]) -> dict[str, Any]:
    def pick(section: str, key: str) -> list[float]:
        return [float(r[section][key]) for r in results if section in r]

    def row(unit: str, values: list[float]) -> dict[str, Any]:
        return {"unit": unit, **summary(values)}

    rows: dict[str, Any] = {}
    for section in ("bare_hypercorn", "healthz", "transaction_get", "open_route"):
        rows[f"http_{section}_per_s"] = {"unit": "req/s", **summary(pick(section, "per_s"))}
        rows[f"http_{section}_p50_ms"] = {"unit": "ms", **summary(pick(section, "p50_ms"))}
    rows["open_route_cpu_ms_per_open"] = row("ms", pick("open_route", "cpu_ms_per_open"))
    rows["idle_open_poll_p50_ms"] = {"unit": "ms", **summary(pick("idle_poll", "p50_ms"))}
    for section in ("poll", "closed", "wait", "ws"):
        if section not in results[0]:
            continue
        rows[f"{section}_opens_per_s"] = {"unit": "opens/s", **summary(pick(section, "per_s"))}
        rows[f"{section}_p50_ms"] = {"unit": "ms", **summary(pick(section, "p50_ms"))}
        rows[f"{section}_p99_ms"] = {"unit": "ms", **summary(pick(section, "p99_ms"))}
        rows[f"{section}_cpu_ms_per_open"] = row("ms", pick(section, "cpu_ms_per_open"))
        rows[f"{section}_polls_per_open"] = row("polls", pick(section, "polls_per_open"))
    rows["ratio_healthz_vs_bare_hypercorn"] = {
        "unit": "ratio",
        **summary([r["healthz"]["per_s"] / r["bare_hypercorn"]["per_s"] for r in results]),
    }
    rows["ratio_transaction_get_vs_bare_hypercorn"] = {
        "unit": "ratio",
        **summary([r["transaction_get"]["per_s"] / r["bare_hypercorn"]["per_s"] for r in results]),
    }
    rows["ratio_open_route_vs_bare_hypercorn"] = {
        "unit": "ratio",
        **summary([r["open_route"]["per_s"] / r["bare_hypercorn"]["per_s"] for r in results]),
    }
    rows["ratio_poll_served_vs_offered"] = {
        "unit": "ratio",
        **summary([r["poll"]["per_s"] / sizes["rate"] for r in results]),
    }
    notes = [
        "lockerd pinned to CPU 0 (taskset), the load generator, the simulated devices and the"
        " broker to CPU 1; the machine may be shared (see other_cores_busy)",
        "round trip: from sending POST …/open to seeing a final status; poll: GET every"
        f" {sizes['poll_interval'] * 1000:g} ms; wait: one GET ?wait=30; ws: the /ws/app stream",
        f"poll/wait/ws: {sizes['rate']:g} opens/s offered over {sizes['offered_compartments']}"
        f" compartments (open loop); closed: {sizes['workers']} workers back to back",
        "http_*: closed-loop requests/s at the same concurrency over keep-alive connections;"
        " open_route: POST …/open then one GET ?wait=30 (so the compartment is free again)",
    ]
    notes.append(
        "other processes kept this many cores busy meanwhile, per run (a lower bound): "
        + ", ".join(f"{r['other_cores_busy']:.2f}" for r in results)
    )
    for r in results:
        for section in ("poll", "wait", "ws"):
            if section not in r:
                continue
            counts = {k: r[section].get(k, 0) for k in ("offered", "skipped_busy", "failed")}
            notes.append(f"{section}: {counts}")
    return {
        "title": "App open path",
        "params": {k: v for k, v in sizes.items()},
        "figures": rows,
        "notes": notes,
        "raw": results,
    }


def print_report(out: dict[str, Any]) -> None:
    for name, row in out["figures"].items():
        runs = ", ".join(f"{v:.3g}" for v in row["runs"])
        print(f"{name:42s} {row['median']:10.4g} {row['unit']:8s} runs: {runs}")
    for note in out["notes"]:
        print(f"  * {note}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--profile", type=Path, help="write py-spy stacks of the closed loop here")
    parser.add_argument(
        "--before",
        type=Path,
        help="run lockerd from this source tree instead (e.g. `git archive main`): a lockerd"
        " without ?wait= and /ws/app, measured the same way (only HTTP, poll and closed)",
    )
    args = parser.parse_args()
    sizes = dict(SMOKE if args.smoke else FULL)
    if args.seconds:
        sizes["seconds"] = args.seconds
    if args.before:
        sizes["before"] = str(args.before.resolve())
    workdir = args.out / "work" / "app"
    profile_to = args.profile
    if profile_to is not None and not available():
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")

    out = trio.run(run, sizes, args.runs, workdir, profile_to)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "bench_app_before.json" if args.before else "bench_app.json"
    (args.out / name).write_text(json.dumps(out, indent=2))
    print_report(out)
    if profile_to is not None:
        for name in ("closed_loop", "open_route"):
            profile = out[f"profile_{name}"]
            print(f"-- profile {name}: {profile['samples']} samples (GIL holder)")
            for group in ("packages_self", "packages_inclusive"):
                parts = ", ".join(f"{p['name']} {p['percent']}%" for p in profile[group][:8])
                print(f"   {group}: {parts}")
            for key in ("tasks", "bank_actor"):
                print(f"   {key} ({profile[key]['percent']}%):")
                for child in profile[key]["below"][:10]:
                    print(f"     {child['percent']:5.1f}% {child['name']}")


if __name__ == "__main__":
    main()
