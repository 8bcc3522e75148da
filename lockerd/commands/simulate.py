"""``lockerd simulate``: N simulated locker banks in one process (the reference device).

Banks come from the admin API (``--api``, ``--admin-token``, ``--banks``, ``--compartments``),
from a file of provisioning tokens (``--bank-tokens``) or from the credentials saved by an
earlier run (``--credentials``). See docs/simulator.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

import trio

from lockerd.device.fleet import (
    BankTicket,
    Fleet,
    SimulationError,
    check_broker,
    create_banks,
    read_credentials_file,
    read_token_file,
    report_progress,
    summary,
    summary_text,
)
from lockerd.device.simulated import Behaviour, Delay, Link

NAMES: tuple[str, ...] = ("simulate",)
HELP: dict[str, str] = {
    "simulate": "run simulated locker banks against a broker (and the admin API)"
}


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _delay(text: str) -> Delay:
    try:
        return Delay.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    env = os.environ
    source = parser.add_argument_group("where the banks come from (one of)")
    source.add_argument("--api", help="lockerd base URL; banks are created via the admin API")
    source.add_argument("--bank-tokens", type=Path, help="file: one provisioning token per line")
    source.add_argument(
        "--credentials", type=Path, help="JSON lines saved by --save-credentials (no provisioning)"
    )
    source.add_argument(
        "--admin-token",
        default=env.get("LOCKERD_ADMIN_TOKEN"),
        help="admin bearer token for --api (default: LOCKERD_ADMIN_TOKEN)",
    )
    source.add_argument("--banks", type=int, default=10, help="banks to create with --api")
    source.add_argument(
        "--compartments", type=int, default=4, help="compartments per bank (default 4)"
    )

    broker = parser.add_argument_group("broker")
    broker.add_argument(
        "--mqtt-url",
        default=env.get("LOCKERD_MQTT_URL") or "mqtt://127.0.0.1:1883",
        help="mqtt://host:port of the broker (default: LOCKERD_MQTT_URL); credentials in it"
        " are ignored: devices log in as the provisioning user, then with their own",
    )
    broker.add_argument(
        "--provisioning-user",
        default=env.get("LOCKERD_PROVISIONING_USER") or "provisioning_client",
    )
    broker.add_argument("--provisioning-password", default=env.get("LOCKERD_PROVISIONING_PASSWORD"))
    broker.add_argument(
        "--connect-concurrency",
        type=int,
        default=64,
        help="devices connecting or provisioning at the same time (default 64)",
    )

    device = parser.add_argument_group("device behaviour")
    device.add_argument(
        "--heartbeat-interval",
        type=_positive,
        default=10.0,
        help="seconds between heartbeats until an apply_config sets the bank's interval;"
        " banks created with --api get this interval (rounded up) (default 10)",
    )
    device.add_argument(
        "--pin-heartbeat-interval",
        action="store_true",
        help="keep --heartbeat-interval even after apply_config",
    )
    device.add_argument(
        "--response-delay",
        type=_delay,
        default=Delay(),
        help="delay before acting on a command: S, fixed:S, uniform:LO:HI, exp:MEAN,"
        " normal:MEAN:SD (default 0)",
    )
    device.add_argument(
        "--error-rate", type=_probability, default=0.0, help="P(open fails with DOOR_JAMMED)"
    )
    device.add_argument(
        "--jam-mode",
        choices=["transient", "sticky"],
        default="transient",
        help="sticky: a compartment that jammed stays jammed (default transient)",
    )
    device.add_argument(
        "--drop-rate", type=_probability, default=0.0, help="P(a command gets no answer)"
    )
    device.add_argument(
        "--crash-rate",
        type=_non_negative,
        default=0.0,
        help="crashes per device per minute: connection cut without DISCONNECT (last will),"
        " reboot after --reboot-delay",
    )
    device.add_argument("--reboot-delay", type=_delay, default=Delay.parse("1"))
    device.add_argument(
        "--door-open", type=_delay, default=Delay.parse("1"), help="seconds a door stays open"
    )
    device.add_argument("--keepalive", type=int, default=30, help="MQTT keepalive seconds")

    run = parser.add_argument_group("run")
    run.add_argument("--duration", type=_positive, help="stop after this many seconds")
    run.add_argument("--seed", type=int, help="random seed (client ids, faults)")
    run.add_argument("--summary-json", type=Path, help="also write the summary here as JSON")
    run.add_argument(
        "--save-credentials",
        type=Path,
        help="write the issued device credentials (JSON lines) for a later --credentials run",
    )
    run.add_argument(
        "--progress-interval", type=_positive, default=1.0, help="seconds between progress lines"
    )


def _link(args: argparse.Namespace) -> Link:
    parts = urlsplit(args.mqtt_url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise SystemExit(
            f"lockerd simulate: --mqtt-url: expected mqtt://host:port, got {args.mqtt_url!r}"
        )
    return Link(
        host=parts.hostname,
        port=parts.port or 1883,
        provisioning_user=args.provisioning_user,
        provisioning_password=args.provisioning_password,
    )


def _behaviour(args: argparse.Namespace) -> Behaviour:
    return Behaviour(
        response_delay=args.response_delay,
        error_rate=args.error_rate,
        jam_mode=args.jam_mode,
        drop_rate=args.drop_rate,
        crash_rate=args.crash_rate,
        reboot_delay=args.reboot_delay,
        door_open=args.door_open,
        heartbeat_interval=args.heartbeat_interval,
        pin_heartbeat_interval=args.pin_heartbeat_interval,
        keepalive=args.keepalive,
    )


async def _tickets(args: argparse.Namespace, behaviour: Behaviour) -> list[BankTicket]:
    sources = [args.api is not None, args.bank_tokens is not None, args.credentials is not None]
    if sum(sources) != 1:
        raise SystemExit(
            "lockerd simulate: give exactly one of --api, --bank-tokens, --credentials"
        )
    if args.compartments < 1:
        raise SystemExit("lockerd simulate: --compartments must be at least 1")
    if args.bank_tokens is not None:
        return read_token_file(args.bank_tokens, args.compartments)
    if args.credentials is not None:
        return read_credentials_file(args.credentials, args.compartments)
    if not args.admin_token:
        raise SystemExit("lockerd simulate: --api needs --admin-token (or LOCKERD_ADMIN_TOKEN)")
    if args.banks < 1:
        raise SystemExit("lockerd simulate: --banks must be at least 1")
    print(f"creating {args.banks} banks through {args.api} ...", file=sys.stderr)
    return await create_banks(
        args.api,
        args.admin_token,
        args.banks,
        args.compartments,
        heartbeat_interval_seconds=int(-(-behaviour.heartbeat_interval // 1)),
    )


async def _main(args: argparse.Namespace) -> int:
    link = _link(args)
    behaviour = _behaviour(args)
    await check_broker(link.host, link.port)
    tickets = await _tickets(args, behaviour)
    if not tickets:
        raise SystemExit("lockerd simulate: no banks to simulate")
    fleet = Fleet(
        link,
        tickets,
        behaviour,
        connect_concurrency=args.connect_concurrency,
        seed=args.seed,
    )
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(fleet.run)
        progress = trio.CancelScope()

        async def show_progress() -> None:
            with progress:
                await report_progress(fleet.stats, started, sys.stderr, args.progress_interval)

        nursery.start_soon(show_progress)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            with trio.move_on_after(args.duration if args.duration else float("inf")):
                async for _ in signals:
                    break
            await fleet.stop()
        progress.cancel()
    elapsed = trio.current_time() - started
    report = summary(fleet, elapsed)
    print(summary_text(report), file=sys.stderr)
    if args.summary_json is not None:
        args.summary_json.write_text(json.dumps(report, indent=2) + "\n")
    if args.save_credentials is not None:
        args.save_credentials.write_text("".join(line + "\n" for line in fleet.credentials_lines()))
    failed = fleet.stats.provisioning_failed + fleet.stats.device_errors
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    """Run the simulation; what the user must fix is one line on stderr and exit status 1."""
    # one line per admin API request says nothing the progress lines do not
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return trio.run(_main, args)
    except SimulationError as exc:
        print(f"lockerd simulate: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file given on the command line
        where = f" {exc.filename}" if exc.filename else ""
        print(f"lockerd simulate:{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
