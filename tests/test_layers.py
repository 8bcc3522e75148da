"""The layers point one way (README, docs/architecture.md), read from the imports themselves.

``domain`` imports nothing of Trio, MQTT, SQL or HTTP, and no other lockerd package; ``actors``
imports no gateway, store, HTTP or application module; ``gateway`` imports no actor, store,
HTTP or application module; ``store`` imports no actor, gateway or application module. Every
``import`` and ``from ... import`` statement counts, lazy ones inside functions included.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

THIRD_PARTY_IN_DOMAIN = {"msgspec", "pyrsistent"}
FORBIDDEN: dict[str, set[str]] = {
    "actors": {
        "gateway",
        "store",
        "lockerd",
        "quart",
        "quart_trio",
        "hypercorn",
        "paho",
        "sqlite3",
        "psycopg",
    },
    "gateway": {
        "actors",
        "store",
        "lockerd",
        "quart",
        "quart_trio",
        "hypercorn",
        "sqlite3",
        "psycopg",
    },
    "store": {"actors", "gateway", "lockerd", "quart", "quart_trio", "hypercorn", "paho"},
}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> Iterator[tuple[int, str]]:
    """(line, top-level module) of every absolute import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def test_every_layer_has_modules() -> None:
    for package in ("domain", "actors", "gateway", "store", "lockerd"):
        assert modules(package), package


@pytest.mark.parametrize("path", modules("domain"), ids=lambda p: str(p.relative_to(ROOT)))
def test_domain_imports_only_the_standard_library_msgspec_and_pyrsistent(path: Path) -> None:
    allowed = set(sys.stdlib_module_names) | THIRD_PARTY_IN_DOMAIN | {"domain", "__future__"}
    wrong = [(line, name) for line, name in imported(path) if name not in allowed]
    assert wrong == [], f"{path.relative_to(ROOT)} imports {wrong}"


@pytest.mark.parametrize(
    "path",
    [path for package in FORBIDDEN for path in modules(package)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_lower_layers_never_import_upward_or_sideways(path: Path) -> None:
    package = path.relative_to(ROOT).parts[0]
    wrong = [(line, name) for line, name in imported(path) if name in FORBIDDEN[package]]
    assert wrong == [], f"{path.relative_to(ROOT)} imports {wrong}"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from lockerd.service import running_service\n")
    assert list(imported(bad)) == [(2, "lockerd")]
