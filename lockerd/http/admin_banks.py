"""Admin routes for locker banks: create, list, read, history, token rotation, apply-config."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any

import msgspec
from quart import Blueprint

from actors.fleet import iso
from actors.registry import BankUnavailable, UnknownBank
from lockerd.domain import commands as c
from lockerd.domain import events as e
from lockerd.http.auth import admin_first, require_admin
from lockerd.http.context import ctx
from lockerd.http.errors import ApiError
from lockerd.http.ids import parse_id
from lockerd.http.validation import json_body
from lockerd.security import new_token
from store.base import SqlTx

blueprint = Blueprint("admin_banks", __name__)


class CompartmentIn(msgspec.Struct, forbid_unknown_fields=True):
    number: Annotated[int, msgspec.Meta(ge=1, le=100_000)]
    slave_id: Annotated[int, msgspec.Meta(ge=0, le=255)]
    address: Annotated[int, msgspec.Meta(ge=0, le=65_535)]


class CreateBankIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    compartments: Annotated[list[CompartmentIn], msgspec.Meta(min_length=1, max_length=1000)]
    location: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    heartbeat_interval_seconds: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 10


async def ask_bank(bank_id: str, command: c.BankCommand) -> Any:
    service = ctx()
    try:
        return await service.registry.ask(bank_id, command)
    except UnknownBank:
        raise ApiError(404, "no such locker bank") from None
    except BankUnavailable as exc:
        raise ApiError(503, f"locker bank unavailable: {exc}") from None


def raise_rejection(outcome: Any) -> None:
    rejection: c.CommandRejected | None = outcome.rejected
    if rejection is None:
        return
    status = {"not_found": 404, "conflict": 409, "invalid": 400}.get(rejection.code, 409)
    raise ApiError(status, rejection.message)


@blueprint.post("/api/admin/locker-banks")
@admin_first
@json_body(CreateBankIn)
async def create_bank(data: CreateBankIn) -> tuple[dict[str, Any], int]:
    service = ctx()
    bank_id = str(uuid.uuid4())
    token = new_token()
    now = service.clock()
    specs = tuple(
        e.CompartmentSpec(
            id=str(uuid.uuid4()), number=spec.number, slave_id=spec.slave_id, address=spec.address
        )
        for spec in data.compartments
    )
    command = c.CreateBank(
        bank_id=bank_id,
        name=data.name,
        location=data.location,
        heartbeat_interval_seconds=data.heartbeat_interval_seconds,
        compartments=specs,
        token_hash=service.keyring.hash("provisioning-token", token),
        token_expires_at=now + timedelta(seconds=service.settings.provisioning_token_ttl),
        now=now,
    )
    try:
        outcome = await service.registry.ask(bank_id, command, allow_new=True)
    except BankUnavailable as exc:
        raise ApiError(503, f"locker bank unavailable: {exc}") from None
    raise_rejection(outcome)
    return {
        "id": bank_id,
        "name": data.name,
        "provisioning_token": token,
        "compartments": [
            {"id": s.id, "number": s.number, "slave_id": s.slave_id, "address": s.address}
            for s in sorted(specs, key=lambda s: s.number)
        ],
    }, 201


_BANK_COLUMNS = (
    "b.id, b.name, b.location, b.provisioned_at, b.config_hash, b.applied_config_hash, s.last_seen"
)


def _read_banks(bank_id: str | None) -> Any:
    def read(tx: SqlTx) -> list[dict[str, Any]]:
        where, params = ("WHERE b.id = ?", (bank_id,)) if bank_id else ("", ())
        banks = tx.query(
            f"SELECT {_BANK_COLUMNS} FROM banks b LEFT JOIN bank_last_seen s ON s.bank_id = b.id"
            f" {where} ORDER BY b.created_at, b.id",
            params,
        )
        compartment_where = "WHERE bank_id = ?" if bank_id else ""
        rows = tx.query(
            "SELECT bank_id, id, number, slave_id, address, door_state FROM compartments"
            f" {compartment_where} ORDER BY bank_id, number",
            params,
        )
        by_bank: dict[str, list[dict[str, Any]]] = {}
        for owner, cid, number, slave_id, address, door in rows:
            by_bank.setdefault(owner, []).append(
                {
                    "id": cid,
                    "number": number,
                    "slave_id": slave_id,
                    "address": address,
                    "door_state": door,
                }
            )
        return [
            {
                "id": bid,
                "name": name,
                "location": location,
                "provisioned_at": provisioned_at,
                "presence": "unknown",
                "last_seen": last_seen,
                "config_hash": config_hash,
                "applied_config_hash": applied,
                "compartments": by_bank.get(bid, []),
            }
            for bid, name, location, provisioned_at, config_hash, applied, last_seen in banks
        ]

    return read


def _with_live_status(bank: dict[str, Any]) -> dict[str, Any]:
    status = ctx().fleet.banks.get(bank["id"])
    if status is not None:
        bank["presence"] = status.presence
        if status.last_seen is not None:
            bank["last_seen"] = iso(status.last_seen)
    return bank


@blueprint.get("/api/admin/locker-banks")
async def list_banks() -> list[dict[str, Any]]:
    await require_admin()
    banks = await ctx().store.read(_read_banks(None))
    return [_with_live_status(bank) for bank in banks]


@blueprint.get("/api/admin/locker-banks/<bank_id>")
async def get_bank(bank_id: str) -> dict[str, Any]:
    await require_admin()
    banks = await ctx().store.read(_read_banks(parse_id(bank_id, "locker bank")))
    if not banks:
        raise ApiError(404, "no such locker bank")
    return _with_live_status(banks[0])


@blueprint.get("/api/admin/locker-banks/<bank_id>/events")
async def bank_events(bank_id: str) -> list[dict[str, Any]]:
    await require_admin()
    bank_id = parse_id(bank_id, "locker bank")
    if bank_id not in ctx().directory.banks:
        raise ApiError(404, "no such locker bank")
    events = await ctx().store.read_stream(bank_id)
    return [
        {
            "position": ev.position,
            "type": ev.type,
            "recorded_at": iso(ev.recorded_at),
            "data": dict(ev.data),
        }
        for ev in events
    ]


@blueprint.post("/api/admin/locker-banks/<bank_id>/provisioning-token")
async def rotate_token(bank_id: str) -> dict[str, Any]:
    await require_admin()
    service = ctx()
    bank_id = parse_id(bank_id, "locker bank")
    token = new_token()
    now = service.clock()
    outcome = await ask_bank(
        bank_id,
        c.IssueProvisioningToken(
            token_hash=service.keyring.hash("provisioning-token", token),
            expires_at=now + timedelta(seconds=service.settings.provisioning_token_ttl),
            now=now,
        ),
    )
    raise_rejection(outcome)
    return {"provisioning_token": token}


@blueprint.post("/api/admin/locker-banks/<bank_id>/apply-config")
async def apply_config(bank_id: str) -> tuple[dict[str, Any], int]:
    principal = await require_admin()
    service = ctx()
    bank_id = parse_id(bank_id, "locker bank")
    if bank_id not in service.directory.banks:
        raise ApiError(404, "no such locker bank")
    transaction_id = str(uuid.uuid4())
    outcome = await ask_bank(
        bank_id,
        c.RequestApplyConfig(
            transaction_id=transaction_id,
            command_timeout_seconds=service.settings.command_timeout,
            now=service.clock(),
            requested_by=principal.user_id,
        ),
    )
    raise_rejection(outcome)
    return {"transaction_id": transaction_id}, 202
