"""The ``lockerd`` command: dispatches to the modules in ``lockerd.commands``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from lockerd.commands import SUBCOMMANDS
from lockerd.config import ConfigError
from lockerd.logging import FORMATS, configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lockerd", description="Backend for smart locker banks")
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default=None,
        help="log format (default: LOCKERD_LOG_FORMAT or json)",
    )
    parser.add_argument("--log-level", default=None, help="debug, info, warning or error")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        for name in module.NAMES:
            child = sub.add_parser(name, help=module.HELP[name])
            module.add_arguments(name, child)
            child.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        configure_logging(
            args.log_format or os.environ.get("LOCKERD_LOG_FORMAT") or "json",
            args.log_level or os.environ.get("LOCKERD_LOG_LEVEL") or "info",
        )
    except ConfigError as exc:
        print(f"lockerd: configuration error: {exc}", file=sys.stderr)
        return 2
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
