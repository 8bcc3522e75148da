"""How fast lockerd answers mosquitto-go-auth's ACL checks, against a bare route on the same server.

    .venv/bin/python bench/goauth_bench.py            # ~20 s, prints a table
    .venv/bin/python bench/goauth_bench.py --smoke    # ~2 s, for CI: fails on any error/5xx
    .venv/bin/python bench/goauth_bench.py --wrk      # the same targets with wrk as the client
                                                      # (installs Debian's wrk if missing)

go-auth calls ``/api/mosq/acl`` synchronously from mosquitto's single thread for every publish and
every delivery (research/goauth.md §1), so two numbers matter: the latency of one call at a time
(concurrency 1, what stalls the broker) and the throughput with several brokers or bursts
(concurrency 8). Both are measured for

* ``acl``  — ``POST /api/mosq/acl?mosq_secret=…`` with go-auth's JSON bodies for a mix of device
  users (allowed and denied rows, acc 1/2/4), the real endpoint with its parsing, secret check,
  identity lookup, ACL function and metrics counter, and
* ``bare`` — ``POST /bench/bare`` on the same Quart app and Hypercorn server, returning 200 with no
  work at all: the floor set by the HTTP stack with Quart-Trio, and
* ``asgi`` — a bare ASGI callable (reads the body, answers 200) served by Hypercorn's trio worker
  with lockerd's own Hypercorn configuration, in the same process on a second port: the floor
  of the server alone, without Quart,

alternating so that drift hits both. The server runs in a child process (this script with
``--serve``), on 127.0.0.1 only, with a throwaway SQLite database and 10,000 synthetic device
users in the directory; no broker is needed (lockerd's MQTT client just keeps retrying). The
client is a minimal keep-alive HTTP/1.1 loop on raw Trio sockets, so it costs little next to
the server.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[1]
sys.path.insert(0, str(ROOT))

SECRET = "bench-mosq-secret"
DEVICES = 10_000


# --------------------------------------------------------------------------- server side


async def serve(device_count: int) -> None:
    from quart import Blueprint, Response

    from lockerd.banks.directory import DeviceCredential
    from lockerd.config import load_settings
    from lockerd.service import BLUEPRINTS, running_service
    from tests.support.mosquitto import free_port

    with tempfile.TemporaryDirectory(prefix="goauth-bench-") as tmp:
        settings = load_settings(
            {},
            {
                "LOCKERD_HTTP": "127.0.0.1:0",
                # nothing listens there: the gateway keeps retrying, HTTP is unaffected
                "LOCKERD_MQTT_URL": f"mqtt://backend:pw@127.0.0.1:{free_port()}",
                "LOCKERD_DATABASE": f"sqlite:///{tmp}/bench.db",
                "LOCKERD_MOSQ_SECRET": SECRET,
                "LOCKERD_PROVISIONING_PASSWORD": "provisioning-password",
                "LOCKERD_SECRET_KEY": "bench-secret-key",
            },
        )
        baseline = Blueprint("bench", __name__)

        @baseline.post("/bench/bare")
        async def bare() -> Response:
            return Response(b'{"ok":true}', status=200, content_type="application/json")

        async with (
            running_service(settings, blueprints=(*BLUEPRINTS, baseline)) as context,
            trio.open_nursery() as nursery,
        ):
            for n in range(device_count):
                context.directory.device_users[device_user(n)] = DeviceCredential(
                    bank_of(n), "0" * 64
                )
            asgi_binds = await nursery.start(serve_bare_asgi)
            print(f"READY {context.http_url} {asgi_binds[0]}", flush=True)
            stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
            while await stdin.receive_some(1024):  # until the parent closes stdin
                pass
            nursery.cancel_scope.cancel()


async def bare_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The smallest HTTP application: read the request body, answer 200 with go-auth's body."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = b'{"ok":true}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def serve_bare_asgi(*, task_status: trio.TaskStatus[list[str]]) -> None:
    from hypercorn.trio import serve as hypercorn_serve

    from lockerd.http.server import hypercorn_config

    await hypercorn_serve(
        bare_asgi,  # type: ignore[arg-type]
        hypercorn_config("127.0.0.1:0"),
        task_status=task_status,
    )


def device_user(n: int) -> str:
    return f"dev-{n:032x}"


def bank_of(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-000000000000"


# --------------------------------------------------------------------------- client side


def acl_bodies(count: int, rng: random.Random) -> list[bytes]:
    """go-auth JSON bodies: 80 % allowed device rows, 20 % denied (other bank, wildcard)."""
    bodies = []
    for _ in range(count):
        n = rng.randrange(DEVICES)
        bank = bank_of(n)
        roll = rng.random()
        if roll < 0.4:
            acc, topic = 2, f"locker/{bank}/state"
        elif roll < 0.6:
            acc, topic = 1, f"locker/{bank}/command"
        elif roll < 0.8:
            acc, topic = 4, "server/status"
        elif roll < 0.9:
            acc, topic = 2, f"locker/{bank_of((n + 1) % DEVICES)}/state"
        else:
            acc, topic = 4, "locker/+/command"
        body = {"acc": acc, "clientid": f"box-{n}", "topic": topic, "username": device_user(n)}
        bodies.append(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    return bodies


def http_request(path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: mosquitto-2.0.11\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """One keep-alive HTTP/1.1 connection: send a request, read exactly one response."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def call(self, request: bytes) -> int:
        await self.stream.send_all(request)
        while b"\r\n\r\n" not in self.buffer:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(rest) < length:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            rest += chunk
        self.buffer = rest[length:]
        return status


@dataclass
class Result:
    target: str
    concurrency: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    reconnects: int = 0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def load(
    host: str, port: int, requests: list[bytes], concurrency: int, seconds: float, result: Result
) -> None:
    connections = [Connection(await trio.open_tcp_stream(host, port)) for _ in range(concurrency)]

    async def worker(conn: Connection, offset: int) -> None:
        index = offset
        clock = time.perf_counter
        latencies, statuses = result.latencies, result.statuses
        while True:
            request = requests[index % len(requests)]
            index += concurrency
            started = clock()
            try:
                status = await conn.call(request)
            except (ConnectionError, trio.BrokenResourceError):
                # Hypercorn closes a keep-alive connection after 1000 requests
                # (keep_alive_max_requests); go-auth's Go client reconnects the same way
                await conn.stream.aclose()
                conn.stream = await trio.open_tcp_stream(host, port)
                conn.buffer = b""
                result.reconnects += 1
                continue
            latencies.append(clock() - started)
            statuses[status] = statuses.get(status, 0) + 1

    started = time.perf_counter()
    try:
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for number, conn in enumerate(connections):
                    nursery.start_soon(worker, conn, number)
    finally:
        result.seconds += time.perf_counter() - started
        for conn in connections:
            await conn.stream.aclose()


WRK_SCRIPT = """
bodies = {%s}
paths = {%s}
n = 0
request = function()
  n = n + 1
  local i = (n %% #bodies) + 1
  return wrk.format("POST", paths[i], {["Content-Type"] = "application/json",
    ["User-Agent"] = "mosquitto-2.0.11"}, bodies[i])
end
"""


def ensure_wrk() -> str:
    import shutil

    found = shutil.which("wrk")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk could not be installed")
    return found


def wrk_run(
    wrk: str, url: str, paths: list[str], bodies: list[bytes], concurrency: int, seconds: float
) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) of one wrk run with these POST bodies."""
    lua = WRK_SCRIPT % (
        ", ".join(json.dumps(body.decode()) for body in bodies),
        ", ".join(json.dumps(path) for path in paths),
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    try:
        out = subprocess.run(
            [
                wrk,
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)

    def latency(label: str) -> float:
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == label:
                value = parts[1]
                for unit, factor in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
                    if value.endswith(unit):
                        return float(value[: -len(unit)]) * factor
        return float("nan")

    rate = next(
        float(line.split()[1]) for line in out.splitlines() if line.startswith("Requests/sec")
    )
    return rate, latency("50%"), latency("99%")


def pure_function_cost(samples: int = 200_000) -> float:
    """µs per ``acl.identify`` + ``acl.allowed`` in this process, for reference."""
    from gateway import acl
    from lockerd.banks.directory import DeviceCredential

    devices = {device_user(n): DeviceCredential(bank_of(n), "") for n in range(DEVICES)}
    rng = random.Random(1)
    checks = [json.loads(body) for body in acl_bodies(1000, rng)]
    started = time.perf_counter()
    for i in range(samples):
        check = checks[i % 1000]
        identity = acl.identify(
            check["username"],
            check["clientid"],
            backend_user="backend",
            provisioning_user="provisioning_client",
            devices=devices,
        )
        acl.allowed(identity, check["topic"], check["acc"])
    return (time.perf_counter() - started) / samples * 1e6


async def bench(args: argparse.Namespace) -> int:
    rng = random.Random(42)
    acl_requests = [
        http_request(f"/api/mosq/acl?mosq_secret={SECRET}", body) for body in acl_bodies(2000, rng)
    ]
    bare_requests = [http_request("/bench/bare", body) for body in acl_bodies(50, rng)]
    smoke = args.smoke
    rounds = 1 if smoke else args.rounds
    slice_seconds = 0.25 if smoke else args.seconds
    levels = [1, 8] if not smoke else [1, 4]
    deadline = 15.0 if smoke else 60.0 + rounds * len(levels) * 2 * slice_seconds * 1.5

    wrk = ensure_wrk() if args.wrk else None
    with trio.fail_after(deadline if wrk is None else deadline * 4):
        process = await trio.lowlevel.open_process(
            [sys.executable, str(SCRIPT), "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env={**os.environ, "LOCKERD_LOG_LEVEL": "error"},
        )
        assert process.stdout is not None and process.stdin is not None
        try:
            line = b""
            while b"\n" not in line:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    raise SystemExit("the bench server exited at start-up")
                line += chunk
            url, asgi_url = (part.decode() for part in line.split()[1:3])
            host, port_text = url.removeprefix("http://").rsplit(":", 1)
            asgi_host, asgi_port_text = asgi_url.removeprefix("http://").rsplit(":", 1)
            if {host, asgi_host} != {"127.0.0.1"}:
                raise SystemExit("loopback only")
            port, asgi_port = int(port_text), int(asgi_port_text)
            results: dict[tuple[str, int], Result] = {}
            # warm-up: route compilation, first-request hooks, caches
            warm = Result("warm", 1)
            await load(host, port, acl_requests, 2, 0.2 if smoke else 1.0, warm)
            await load(host, port, bare_requests, 2, 0.1 if smoke else 0.5, warm)
            await load(asgi_host, asgi_port, bare_requests, 2, 0.1 if smoke else 0.5, warm)
            if wrk is not None:
                acl_bodies_list = acl_bodies(200, random.Random(7))
                acl_path = f"/api/mosq/acl?mosq_secret={SECRET}"
                print(
                    f"{'target':<6} {'conc':>4} {'checks/s':>10} {'p50 ms':>8} {'p99 ms':>8} (wrk)"
                )
                for concurrency in levels:
                    runs: dict[str, list[tuple[float, float, float]]] = {}
                    for _ in range(rounds):  # alternating, as the built-in client does
                        for target, target_port, path in (
                            ("asgi", asgi_port, "/bench/bare"),
                            ("bare", port, "/bench/bare"),
                            ("acl", port, acl_path),
                        ):
                            paths = [path] * len(acl_bodies_list)
                            runs.setdefault(target, []).append(
                                await trio.to_thread.run_sync(
                                    wrk_run,
                                    wrk,
                                    f"http://{host}:{target_port}",
                                    paths,
                                    acl_bodies_list,
                                    concurrency,
                                    slice_seconds,
                                )
                            )
                    figures = {
                        target: tuple(
                            statistics.median(run[i] for run in samples) for i in range(3)
                        )
                        for target, samples in runs.items()
                    }
                    for target, (rate, p50, p99) in figures.items():
                        print(
                            f"{target:<6} {concurrency:>4} {rate:>10,.0f} {p50:>8.2f} {p99:>8.2f}"
                        )
                    for baseline in ("bare", "asgi"):
                        print(
                            f"concurrency {concurrency} (wrk): acl/{baseline} throughput ratio "
                            f"{figures['acl'][0] / figures[baseline][0]:.2f}, p99 ratio "
                            f"{figures['acl'][2] / figures[baseline][2]:.2f}"
                        )
            targets = (
                ("asgi", asgi_port, bare_requests),
                ("bare", port, bare_requests),
                ("acl", port, acl_requests),
            )
            for _ in range(rounds):
                for concurrency in levels:
                    for target, target_port, requests in targets:
                        result = results.setdefault(
                            (target, concurrency), Result(target, concurrency)
                        )
                        await load(host, target_port, requests, concurrency, slice_seconds, result)
        finally:
            await process.stdin.aclose()
            with trio.move_on_after(5):
                await process.wait()
            if process.returncode is None:
                process.kill()

    problems = []
    print(f"{'target':<6} {'conc':>4} {'checks/s':>10} {'p50 ms':>8} {'p99 ms':>8} statuses")
    for (target, concurrency), result in sorted(
        results.items(), key=lambda kv: (kv[0][1], kv[0][0])
    ):
        p50, p99 = result.percentile(0.5) * 1e3, result.percentile(0.99) * 1e3
        statuses = dict(sorted(result.statuses.items()))
        print(
            f"{target:<6} {concurrency:>4} {result.rate:>10,.0f} {p50:>8.2f} {p99:>8.2f} {statuses}"
        )
        bad = {code: n for code, n in result.statuses.items() if code not in (200, 403)}
        if bad:
            problems.append(f"{target}@{concurrency}: unexpected statuses {bad}")
        if not result.latencies:
            problems.append(f"{target}@{concurrency}: no request completed")
    for concurrency in levels:
        acl_result = results[("acl", concurrency)]
        for baseline in ("bare", "asgi"):
            base = results[(baseline, concurrency)]
            if base.rate:
                ratio = acl_result.rate / base.rate
                acl_p99 = acl_result.percentile(0.99) * 1e3
                base_p99 = base.percentile(0.99) * 1e3
                print(
                    f"concurrency {concurrency}: acl/{baseline} throughput ratio {ratio:.2f},"
                    f" p99 {acl_p99:.2f} vs {base_p99:.2f} ms (ratio {acl_p99 / base_p99:.2f})"
                )
    denied = results[("acl", levels[0])].statuses.get(403, 0)
    if not denied:
        problems.append("the ACL mix produced no denies: the endpoint is not deciding")
    if not smoke:
        print(f"pure acl.identify + acl.allowed: {pure_function_cost():.2f} µs per check")
        print(
            f"median of per-request latencies, acl@1: "
            f"{statistics.median(results[('acl', 1)].latencies) * 1e3:.3f} ms"
        )
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="~2 s run for CI")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per measured slice")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of bare/acl")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--wrk", action="store_true", help="also measure with wrk as the client")
    args = parser.parse_args()
    if args.serve:
        import logging

        import structlog

        logging.disable(logging.CRITICAL)
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
        trio.run(serve, DEVICES)
        return 0
    started = time.perf_counter()
    status = trio.run(bench, args)
    print(f"total {time.perf_counter() - started:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
