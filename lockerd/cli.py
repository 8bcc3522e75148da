"""The ``lockerd`` command."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

import trio

from lockerd.config import VARIABLES, ConfigError, Settings, load_settings
from lockerd.logging import configure_logging

SUBCOMMANDS: dict[str, str] = {"serve": "run the service (HTTP, MQTT gateway, actors, store)"}


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for variable, (flag, default) in VARIABLES.items():
        parser.add_argument(
            flag,
            dest=variable,
            default=None,
            help=f"overrides {variable} (default: {default if default is not None else 'unset'})",
        )
    parser.add_argument(
        "--log-format",
        choices=["json", "console"],
        default=None,
        help="log format (default: LOCKERD_LOG_FORMAT or json)",
    )
    parser.add_argument("--log-level", default=None, help="debug, info, warning, error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lockerd", description="Backend for smart locker banks")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help=SUBCOMMANDS["serve"])
    _add_config_flags(serve)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {variable: getattr(args, variable, None) for variable in VARIABLES}
    return load_settings(os.environ, overrides)


async def _serve_until_signal(settings: Settings) -> None:
    from lockerd.service import serve

    async with trio.open_nursery() as nursery:
        context = await nursery.start(serve, settings)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                context.shutdown.set()
                break


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(
        args.log_format or os.environ.get("LOCKERD_LOG_FORMAT", "json"),
        args.log_level or os.environ.get("LOCKERD_LOG_LEVEL", "info"),
    )
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"lockerd: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        trio.run(_serve_until_signal, settings)
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
