"""Subcommands of ``lockerd``: each module has ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``."""

from __future__ import annotations

import argparse
from importlib import import_module
from typing import Protocol

COMMANDS = ("serve", "provision_test", "simulate", "store_ops")


class Subcommand(Protocol):
    NAMES: tuple[str, ...]
    HELP: dict[str, str]

    def add_arguments(self, name: str, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def subcommands() -> list[Subcommand]:
    return [import_module(f"lockerd.commands.{name}") for name in COMMANDS]  # type: ignore[misc,unused-ignore]
