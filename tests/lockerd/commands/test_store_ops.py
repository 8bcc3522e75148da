"""``lockerd export`` / ``import`` / ``migrate`` / ``rebuild-projections`` across backends.

The round trips go SQLite -> "middle" -> SQLite, where the middle is PostgreSQL when
``LOCKERD_TEST_POSTGRES_URL`` is set and another SQLite file otherwise, so the commands are
always tested and the cross-backend path whenever a server is there.
"""

from __future__ import annotations

import json
import os
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import trio

from lockerd.banks.projections import PROJECTIONS
from lockerd.commands.store_ops import (
    ImportRejected,
    export_store,
    import_store,
    migrate,
    rebuild,
)
from store import NewEvent, Snapshot, SqlTx, open_store
from tests.support.mosquitto import MosquittoBroker
from tests.support.postgres import server_url
from tests.support.service import database_url_for, lockerd, test_settings

MIDDLE = "postgresql" if server_url() else "sqlite"
DEADLINE = 60


def url_for(tmp_path: Path, name: str, backend: str) -> str:
    directory = tmp_path / name
    directory.mkdir(exist_ok=True)
    return database_url_for(directory, backend)


async def cli(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """Run ``lockerd <args>`` as a separate process; returns (status, stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKERD_")}
    with trio.fail_after(DEADLINE):
        done = await trio.run_process(
            [sys.executable, "-m", "lockerd.cli", *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def export_lines(url: str, *, snapshots: bool = False) -> list[str]:
    out = StringIO()
    await export_store(url, out, snapshots=snapshots)
    return out.getvalue().splitlines()


def without_positions(lines: list[str]) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in lines]
    for record in records:
        record.pop("position", None)
    return records


TRICKY = {
    "unicode": "ü€ 🔒 \u0000 nul",
    "floats": [0.1, 1e300, 5e-324, -0.0, 2.5],
    "ints": [0, -1, 2**62],
    "nested": {"b": [True, False, None], "a": {}},
}


async def fill(url: str) -> None:
    """Events on a few streams, one failed append (a gap in PostgreSQL), and snapshots."""
    async with open_store(url) as store:
        await store.append("alpha", 0, [NewEvent("Created", TRICKY), NewEvent("Renamed", {})])
        await store.append("beta", 0, [NewEvent("Created", {"n": 1})])
        with pytest.raises(Exception):  # noqa: B017 - a stale version: any conflict error
            await store.append("beta", 0, [NewEvent("Lost", {})])
        await store.append("alpha", 2, [NewEvent("Closed", {"why": "done"})])
        await store.append("gamma", 0, [NewEvent(f"T{n}", {"n": n}) for n in range(5)])
        await store.save_snapshot(Snapshot("alpha", 2, b"\x00\xffstate"))
        await store.save_snapshot(Snapshot("gamma", 5, b"g"))


async def test_round_trip_keeps_everything_but_positions(tmp_path: Path) -> None:
    source = url_for(tmp_path, "source", "sqlite")
    middle = url_for(tmp_path, "middle", MIDDLE)
    final = url_for(tmp_path, "final", "sqlite")
    await fill(source)

    first = await export_lines(source, snapshots=True)
    assert len(first) == 9 + 2
    assert all(
        line
        == json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        for line in first
    )
    summary = await import_store(middle, first)
    assert (summary.events, summary.streams, summary.snapshots) == (9, 3, 2)
    second = await export_lines(middle, snapshots=True)
    await import_store(final, second)
    third = await export_lines(final, snapshots=True)

    # Identical lines apart from positions; here the positions agree too, because the
    # SQLite source has no gaps and a fresh store numbers from 1.
    assert without_positions(second) == without_positions(first)
    assert third == second == first
    async with open_store(final) as store:
        stored = await store.read_stream("alpha")
        assert stored[0].data == TRICKY
        assert await store.load_snapshot("alpha") == Snapshot("alpha", 2, b"\x00\xffstate")


async def test_export_of_a_store_with_gaps_renumbers_on_import(tmp_path: Path) -> None:
    source = url_for(tmp_path, "gappy", MIDDLE)
    await fill(source)
    async with open_store(source) as store:
        # Make a gap for sure (PostgreSQL makes one above already; SQLite never does).
        await store.write(lambda tx: tx.execute("DELETE FROM events WHERE stream_id = 'beta'"))
    lines = await export_lines(source)
    target = url_for(tmp_path, "renumbered", "sqlite")
    await import_store(target, lines)
    again = await export_lines(target)
    assert without_positions(again) == without_positions(lines)
    assert [json.loads(line)["position"] for line in again] == list(range(1, len(lines) + 1))
    assert [json.loads(line)["position"] for line in lines] != list(range(1, len(lines) + 1))


async def test_import_is_all_or_nothing(tmp_path: Path) -> None:
    source = url_for(tmp_path, "source", "sqlite")
    await fill(source)
    lines = await export_lines(source)
    target = url_for(tmp_path, "target", MIDDLE)

    broken = [*lines[:4], lines[4].replace('"version":1', '"version":2'), *lines[5:]]
    with pytest.raises(ImportRejected, match="line 5: stream 'gamma' must continue with version 1"):
        await import_store(target, broken)
    cases = {
        "not JSON": [*lines[:3], "{oops"],
        "keys": [*lines[:3], json.dumps({"position": 99})],
        "increasing": [lines[2], lines[0]],
        "zone": [lines[0].replace('Z"', '"')],
        "data must be": [lines[0].replace('"data":{', '"data":[{').replace('},"pos', '}],"pos')],
    }
    for message, bad in cases.items():
        with pytest.raises(ImportRejected, match=message):
            await import_store(target, bad)
    assert await export_lines(target) == []  # nothing of the failed imports stayed

    await import_store(target, lines)
    with pytest.raises(ImportRejected, match="not empty"):
        await import_store(target, lines)
    assert await export_lines(target) == lines


async def test_service_data_moves_between_backends(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """Banks created on SQLite are served unchanged from the other backend after an import."""
    source = url_for(tmp_path, "service-source", "sqlite")
    target = url_for(tmp_path, "service-target", MIDDLE)

    async def snapshot_of(url: str) -> tuple[list[Any], list[Any]]:
        settings = test_settings(mosquitto.url, tmp_path / "unused.db", LOCKERD_DATABASE=url)
        async with lockerd(settings) as svc:
            banks = (await svc.admin_get("/api/admin/locker-banks")).json()
            details = []
            for bank in sorted(banks, key=lambda b: b["id"]):
                detail = (await svc.admin_get(f"/api/admin/locker-banks/{bank['id']}")).json()
                history = await svc.admin_get(f"/api/admin/locker-banks/{bank['id']}/events")
                details.append((detail, history.json()))
            return banks, details

    settings = test_settings(mosquitto.url, tmp_path / "unused.db", LOCKERD_DATABASE=source)
    async with lockerd(settings) as svc:
        first = await svc.create_bank(compartments=3, name="Town hall", location="Foyer")
        await svc.create_bank(compartments=1, name="Library")
        response = await svc.admin_post(f"/api/admin/locker-banks/{first['id']}/provisioning-token")
        assert response.status_code == 200, response.text

    before = await snapshot_of(source)
    await import_store(target, await export_lines(source))
    after = await snapshot_of(target)
    assert after == before
    assert len(before[0]) == 2


async def test_rebuild_and_migrate(tmp_path: Path) -> None:
    url = url_for(tmp_path, "rebuild", MIDDLE)
    await migrate(url)
    async with open_store(url, PROJECTIONS) as store:
        bank = {
            "bank_id": "b1",
            "name": "Depot",
            "location": None,
            "heartbeat_interval_seconds": 10,
            "created_at": "2026-11-24T10:00:00Z",
            "compartments": [{"id": "c1", "number": 1, "slave_id": 1, "address": 0}],
        }
        await store.append("b1", 0, [NewEvent("LockerBankCreated", bank)])

        def vandalize(tx: SqlTx) -> None:
            tx.execute("DELETE FROM compartments")
            tx.execute("UPDATE banks SET name = 'garbage'")

        await store.write(vandalize)
    assert await rebuild(url) == 1
    async with open_store(url, PROJECTIONS) as store:
        rows = await store.read(
            lambda tx: [
                *tx.query("SELECT id, name FROM banks"),
                *tx.query("SELECT id, door_state FROM compartments"),
            ]
        )
    assert rows == [("b1", "Depot"), ("c1", "unknown")]


async def test_the_commands_from_the_command_line(tmp_path: Path) -> None:
    source = url_for(tmp_path, "cli-source", "sqlite")
    middle = url_for(tmp_path, "cli-middle", MIDDLE)
    await fill(source)
    exported = tmp_path / "export.jsonl"

    status, out, err = await cli("migrate", "--database", middle)
    assert (status, out) == (0, ""), err
    assert "schema up to date" in err

    status, out, err = await cli(
        "export", "--database", source, "--output", str(exported), "--snapshots"
    )
    assert status == 0, err
    assert "exported 9 events, 2 snapshots" in err
    lines = exported.read_text(encoding="utf-8").splitlines()
    assert lines == await export_lines(source, snapshots=True)

    status, out, err = await cli(
        "import", "--database", middle, "--input", "-", stdin=exported.read_bytes()
    )
    assert status == 0, err
    assert "imported 9 events in 3 streams and 2 snapshots" in err

    status, out, err = await cli("export", "--database", middle, "--snapshots")
    assert status == 0, err
    assert out.splitlines() == lines

    status, out, err = await cli("import", "--database", middle, "--input", str(exported))
    assert status == 1
    assert "import failed" in err and "not empty" in err
    assert len(err.strip().splitlines()) == 1

    status, out, err = await cli("rebuild-projections", "--database", middle)
    assert status == 0, err
    assert "projections rebuilt from 9 events" in err

    status, out, err = await cli("export", "--database", "mysql://nope")
    assert status == 2
    assert "LOCKERD_DATABASE" in err

    unreachable = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"
    status, out, err = await cli("export", "--database", unreachable)
    assert status == 1
    assert "export failed" in err


async def test_operator_streams_travel_and_rebuild(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """Groups, group grants and the audit log (operator streams beside the banks') survive an
    export and import to the other backend and a rebuild; only banks start actors."""
    source = url_for(tmp_path, "people-source", "sqlite")
    target = url_for(tmp_path, "people-target", MIDDLE)
    settings = test_settings(mosquitto.url, tmp_path / "unused.db", LOCKERD_DATABASE=source)
    async with lockerd(settings) as svc:
        bank = await svc.create_bank()
        user = await svc.admin_post(
            "/api/admin/users",
            {"email": "p@example.org", "password": "long enough pw", "name": "P"},
        )
        group = await svc.admin_post("/api/admin/groups", {"name": "crew"})
        group_id = group.json()["id"]
        path = f"/api/admin/groups/{group_id}/members"
        assert (await svc.admin_post(path, {"user_id": user.json()["id"]})).status_code == 204
        grants = f"/api/admin/compartments/{bank['compartments'][0]['id']}/grants"
        assert (await svc.admin_post(grants, {"group_id": group_id})).status_code == 201
        tenant = await svc.admin_post("/api/admin/tenants", {"name": "acme"})
        assert tenant.status_code == 201
        audit_before = (await svc.admin_get("/api/admin/audit?limit=1000")).json()
        grants_before = (await svc.admin_get(grants)).json()

    lines = await export_lines(source)
    streams = {json.loads(line)["stream_id"] for line in lines}
    assert {f"group:{group_id}", f"tenant:{tenant.json()['id']}", bank["id"]} <= streams
    await import_store(target, lines)
    assert await rebuild(target) == len(lines)
    settings = test_settings(mosquitto.url, tmp_path / "unused.db", LOCKERD_DATABASE=target)
    async with lockerd(settings) as svc:
        # no actor for the others (a node on PostgreSQL starts its shards' banks at once; on
        # SQLite a bank's actor starts only when it is first needed)
        assert set(svc.context.registry.entries) <= {bank["id"]}
        groups = (await svc.admin_get("/api/admin/groups")).json()
        # the users table does not travel (docs/deploy.md); the membership event does
        assert groups == [{"id": group_id, "name": "crew", "members": [user.json()["id"]]}]
        assert (await svc.admin_get(grants)).json() == grants_before
        audit_after = (await svc.admin_get("/api/admin/audit?limit=1000")).json()
        strip = [
            {k: v for k, v in e.items() if k not in ("position", "recorded_at")}
            for e in audit_before
        ]
        assert [
            {k: v for k, v in e.items() if k not in ("position", "recorded_at")}
            for e in audit_after
        ] == strip
