"""Admin routes for locker banks: create, list, read, history, token rotation, apply-config.

The response models below document the answers in /openapi.json only: the handlers build their
answers themselves (documentation, not validation).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated, Any

import msgspec
from quart import Blueprint

from domain import commands as c
from domain import events as e
from domain.events import DoorState, Presence
from domain.keys import new_token
from domain.wiretime import iso
from lockerd.banks import queries
from lockerd.http.asking import ask_bank
from lockerd.http.auth import admin_first, require_admin
from lockerd.http.context import ctx
from lockerd.http.errors import ApiError
from lockerd.http.ids import parse_id
from lockerd.http.openapi import IsoTime, documented
from lockerd.http.validation import json_body

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


class NewCompartmentOut(msgspec.Struct):
    """A compartment of a newly created locker bank."""

    id: str
    number: int
    slave_id: int
    address: int


class CreatedBankOut(msgspec.Struct):
    """The created locker bank and its first provisioning token (shown once)."""

    id: str
    name: str
    provisioning_token: str
    compartments: Annotated[list[NewCompartmentOut], msgspec.Meta(description="ordered by number")]


class BankCompartmentOut(msgspec.Struct):
    """A compartment of a locker bank, as admins see it."""

    id: str
    number: int
    slave_id: int
    address: int
    door_state: DoorState
    out_of_service: Annotated[bool, msgspec.Meta(description="opens are refused while true")]


class BankOut(msgspec.Struct):
    """A locker bank, as admins see it."""

    id: str
    name: str
    location: str | None
    heartbeat_interval_seconds: int
    decommissioned: Annotated[
        bool, msgspec.Meta(description="true: credentials revoked, opens refused, read only")
    ]
    provisioned_at: IsoTime | None
    presence: Presence
    last_seen: IsoTime | None
    config_hash: str | None
    applied_config_hash: str | None
    compartments: Annotated[list[BankCompartmentOut], msgspec.Meta(description="ordered by number")]


class BankEventOut(msgspec.Struct):
    """One event of a locker bank's history."""

    position: Annotated[int, msgspec.Meta(description="the event's place in the bank's stream")]
    type: str
    recorded_at: IsoTime
    data: dict[str, Any]


class ProvisioningTokenOut(msgspec.Struct):
    """A new provisioning token (shown once); the older ones are void."""

    provisioning_token: str


class ApplyConfigOut(msgspec.Struct):
    """The apply_config command has been accepted; follow it at /api/transactions/{id}."""

    transaction_id: str


@blueprint.post("/api/admin/locker-banks")
@documented((CreatedBankOut, 201), 400, 401, 403, 413, 503)
@admin_first
@json_body(CreateBankIn)
async def create_bank(data: CreateBankIn) -> tuple[dict[str, Any], int]:
    """Create a locker bank with its compartments."""
    principal = await require_admin()
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
        actor=principal.actor,
    )
    await ask_bank(bank_id, command, allow_new=True)
    return {
        "id": bank_id,
        "name": data.name,
        "provisioning_token": token,
        "compartments": [
            {"id": s.id, "number": s.number, "slave_id": s.slave_id, "address": s.address}
            for s in sorted(specs, key=lambda s: s.number)
        ],
    }, 201


def with_live_status(bank: dict[str, Any]) -> dict[str, Any]:
    status = ctx().fleet.banks.get(bank["id"])
    if status is not None:
        bank["presence"] = status.presence
        if status.last_seen is not None:
            bank["last_seen"] = iso(status.last_seen)
    return bank


@blueprint.get("/api/admin/locker-banks")
@documented((list[BankOut], 200), 401, 403)
async def list_banks() -> list[dict[str, Any]]:
    """Every locker bank, oldest first."""
    await require_admin()
    banks = await ctx().tables.read(queries.banks())
    return [with_live_status(bank) for bank in banks]


@blueprint.get("/api/admin/locker-banks/<bank_id>")
@documented((BankOut, 200), 401, 403, 404)
async def get_bank(bank_id: str) -> dict[str, Any]:
    """One locker bank."""
    await require_admin()
    banks = await ctx().tables.read(queries.banks(parse_id(bank_id, "locker bank")))
    if not banks:
        raise ApiError(404, "no such locker bank")
    return with_live_status(banks[0])


@blueprint.get("/api/admin/locker-banks/<bank_id>/events")
@documented((list[BankEventOut], 200), 401, 403, 404)
async def bank_events(bank_id: str) -> list[dict[str, Any]]:
    """A locker bank's history, oldest first."""
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
@documented(
    (ProvisioningTokenOut, 200),
    401,
    403,
    404,
    (409, "The locker bank is decommissioned."),
    503,
)
async def rotate_token(bank_id: str) -> dict[str, Any]:
    """Issue a new provisioning token; the older ones are void."""
    principal = await require_admin()
    service = ctx()
    bank_id = parse_id(bank_id, "locker bank")
    token = new_token()
    now = service.clock()
    await ask_bank(
        bank_id,
        c.IssueProvisioningToken(
            token_hash=service.keyring.hash("provisioning-token", token),
            expires_at=now + timedelta(seconds=service.settings.provisioning_token_ttl),
            actor=principal.actor,
        ),
    )
    return {"provisioning_token": token}


@blueprint.post("/api/admin/locker-banks/<bank_id>/apply-config")
@documented(
    (ApplyConfigOut, 202),
    401,
    403,
    404,
    (409, "An apply_config command for this bank is still pending, or it is decommissioned."),
    503,
)
async def apply_config(bank_id: str) -> tuple[dict[str, Any], int]:
    """Push the bank's configuration to the device."""
    principal = await require_admin()
    service = ctx()
    bank_id = parse_id(bank_id, "locker bank")
    if bank_id not in service.directory.banks:
        raise ApiError(404, "no such locker bank")
    transaction_id = str(uuid.uuid4())
    await ask_bank(
        bank_id,
        c.RequestApplyConfig(
            transaction_id=transaction_id,
            command_timeout_seconds=service.settings.command_timeout,
            requested_by=principal.user_id,
            actor=principal.actor,
        ),
    )
    return {"transaction_id": transaction_id}, 202
