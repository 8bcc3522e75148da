"""``lockerd serve``."""

from __future__ import annotations

import argparse
import os
import signal
import sys

import trio

from lockerd.config import VARIABLES, ConfigError, Settings, load_settings

NAMES: tuple[str, ...] = ("serve",)
HELP: dict[str, str] = {"serve": "run the service (HTTP, MQTT gateway, actors, timers, store)"}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    for variable, (flag, default) in VARIABLES.items():
        parser.add_argument(
            flag,
            dest=variable,
            default=None,
            help=f"overrides {variable} (default: {default if default is not None else 'unset'})",
        )


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser)


def settings_from(args: argparse.Namespace) -> Settings:
    overrides = {variable: getattr(args, variable, None) for variable in VARIABLES}
    return load_settings(os.environ, overrides)


def settings_or_exit(args: argparse.Namespace) -> Settings:
    try:
        return settings_from(args)
    except ConfigError as exc:
        print(f"lockerd: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


async def _serve_until_signal(settings: Settings) -> None:
    from lockerd.service import serve

    async with trio.open_nursery() as nursery:
        context = await nursery.start(serve, settings)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                context.shutdown.set()
                break


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT (exit 0); a start-up failure is one line on stderr (exit 1)."""
    from lockerd.service import StartupError
    from store.base import StoreUnavailable

    settings = settings_or_exit(args)
    problem: str | None = None
    try:
        trio.run(_serve_until_signal, settings)
    except* StartupError as group:
        problem = str(_first(group))
    except* StoreUnavailable as group:
        problem = f"LOCKERD_DATABASE: {_first(group)}"
    if problem is not None:
        one_line = " ".join(problem.split())
        print(f"lockerd: cannot start: {one_line}", file=sys.stderr)
        return 1
    return 0


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
