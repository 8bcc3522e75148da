"""Subcommands of ``lockerd``.

Each module has ``NAMES``, ``HELP``, ``add_arguments(name, parser)`` and ``run(args) -> int``;
:data:`SUBCOMMANDS` lists them explicitly. The modules import what they run lazily inside
``run`` where it is heavy, so ``lockerd --help`` stays quick.
"""

from __future__ import annotations

import argparse
from typing import Protocol

from lockerd.commands import provision_test, serve, simulate, store_ops


class Subcommand(Protocol):
    NAMES: tuple[str, ...]
    HELP: dict[str, str]

    def add_arguments(self, name: str, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


SUBCOMMANDS: tuple[Subcommand, ...] = (serve, provision_test, simulate, store_ops)
