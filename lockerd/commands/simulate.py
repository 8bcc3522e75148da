"""Not implemented yet."""

from __future__ import annotations

import argparse

NAMES: tuple[str, ...] = ()
HELP: dict[str, str] = {}


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    return 2
