"""Admin routes of a bank's lifecycle (contract §5): edit a bank, add, edit and retire
compartments, decommission, restart a failed bank actor, and an operator's open.

Every change is a bank command naming its actor (``Principal.actor``), asked of the bank's
actor through :func:`lockerd.http.asking.ask_bank`: on whichever node owns the bank, as every
admin bank command is (docs/architecture.md, "More than one node"). The answers are read back
from the read models, which the append that recorded the change has updated. Error order
(contract §4): 401, 403 (the role, before the body), 400/415 (the body), 404, 409.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from quart import Blueprint

from domain import commands as c
from lockerd.banks import queries
from lockerd.banks.opening import open_answer
from lockerd.banks.routes import BankCompartmentOut, BankOut, CompartmentIn, with_live_status
from lockerd.http.asking import ask_bank, bank_of_compartment
from lockerd.http.auth import admin_first, require_admin
from lockerd.http.context import ctx
from lockerd.http.errors import ApiError
from lockerd.http.ids import parse_id
from lockerd.http.openapi import documented
from lockerd.http.validation import json_body

blueprint = Blueprint("admin_bank_lifecycle", __name__)

DECOMMISSIONED = (409, "The locker bank is decommissioned: it takes no more changes.")
MAX_REASON_CHARS = 500

SlaveId = Annotated[int, msgspec.Meta(ge=0, le=255)]
Address = Annotated[int, msgspec.Meta(ge=0, le=65_535)]


class EditBankIn(msgspec.Struct, forbid_unknown_fields=True):
    """Only the fields given change; ``"location": null`` clears it. A new heartbeat interval
    is a new configuration (a new ``config_hash``, pushed to an online bank)."""

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    location: Annotated[str, msgspec.Meta(max_length=500)] | msgspec.UnsetType | None = (
        msgspec.UNSET
    )
    heartbeat_interval_seconds: Annotated[int, msgspec.Meta(ge=1, le=3600)] | msgspec.UnsetType = (
        msgspec.UNSET
    )


class EditCompartmentIn(msgspec.Struct, forbid_unknown_fields=True):
    """Only the fields given change. A new ``slave_id`` or ``address`` is a new configuration;
    ``out_of_service`` is not part of it (opens are refused while it is true)."""

    slave_id: SlaveId | msgspec.UnsetType = msgspec.UNSET
    address: Address | msgspec.UnsetType = msgspec.UNSET
    out_of_service: bool | msgspec.UnsetType = msgspec.UNSET


class OperatorOpenIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=MAX_REASON_CHARS,
            description="why the operator opens it (recorded with the actor)",
        ),
    ]


class OperatorOpenOut(msgspec.Struct):
    """The open has been sent; follow it at /api/transactions/{id}."""

    transaction_id: str
    status: str


class RestartOut(msgspec.Struct):
    """The bank's actor has been started again."""

    id: str
    restarted: bool


def _unset(value: Any) -> Any:
    return None if value is msgspec.UNSET else value


def _config_change() -> dict[str, Any]:
    """What every configuration change carries for the push that may follow it."""
    return {
        "transaction_id": str(uuid.uuid4()),
        "command_timeout_seconds": ctx().settings.command_timeout,
    }


async def _bank_answer(bank_id: str) -> dict[str, Any]:
    banks = await ctx().tables.read(queries.banks(bank_id))
    if not banks:
        raise ApiError(404, "no such locker bank")
    return with_live_status(banks[0])


async def _compartment_answer(compartment_id: str) -> dict[str, Any]:
    compartment = await ctx().tables.read(queries.compartment(compartment_id))
    if compartment is None:
        raise ApiError(404, "no such compartment")
    return compartment


@blueprint.patch("/api/admin/locker-banks/<bank_id>")
@documented((BankOut, 200), 401, 403, 404, DECOMMISSIONED, 413, 503)
@admin_first
@json_body(EditBankIn)
async def edit_bank(bank_id: str, data: EditBankIn) -> dict[str, Any]:
    """Rename a bank, move it, or give it a new heartbeat interval."""
    principal = await require_admin()
    bank_id = parse_id(bank_id, "locker bank")
    await ask_bank(
        bank_id,
        c.EditBank(
            actor=principal.actor,
            **_config_change(),
            name=_unset(data.name),
            location=_unset(data.location),
            set_location=data.location is not msgspec.UNSET,
            heartbeat_interval_seconds=_unset(data.heartbeat_interval_seconds),
        ),
    )
    return await _bank_answer(bank_id)


@blueprint.post("/api/admin/locker-banks/<bank_id>/compartments")
@documented(
    (BankCompartmentOut, 201),
    401,
    403,
    404,
    (409, "The number, or the slave_id and address, are taken; or the bank is decommissioned."),
    413,
    503,
)
@admin_first
@json_body(CompartmentIn)
async def add_compartment(bank_id: str, data: CompartmentIn) -> tuple[dict[str, Any], int]:
    """Add a compartment: a new configuration, pushed to the bank when it is online."""
    principal = await require_admin()
    bank_id = parse_id(bank_id, "locker bank")
    compartment_id = str(uuid.uuid4())
    await ask_bank(
        bank_id,
        c.AddCompartment(
            actor=principal.actor,
            **_config_change(),
            compartment_id=compartment_id,
            number=data.number,
            slave_id=data.slave_id,
            address=data.address,
        ),
    )
    return await _compartment_answer(compartment_id), 201


@blueprint.patch("/api/admin/compartments/<compartment_id>")
@documented(
    (BankCompartmentOut, 200),
    401,
    403,
    (404, "No such compartment."),
    (409, "The slave_id and address are another compartment's; or the bank is decommissioned."),
    413,
    503,
)
@admin_first
@json_body(EditCompartmentIn)
async def edit_compartment(compartment_id: str, data: EditCompartmentIn) -> dict[str, Any]:
    """Change a compartment's Modbus slave id or address, or take it out of service (or put
    it back)."""
    principal = await require_admin()
    bank_id = bank_of_compartment(compartment_id)
    compartment_id = parse_id(compartment_id, "compartment")
    await ask_bank(
        bank_id,
        c.EditCompartment(
            actor=principal.actor,
            **_config_change(),
            compartment_id=compartment_id,
            slave_id=_unset(data.slave_id),
            address=_unset(data.address),
            out_of_service=_unset(data.out_of_service),
        ),
    )
    return await _compartment_answer(compartment_id)


@blueprint.delete("/api/admin/compartments/<compartment_id>")
@documented(
    204,
    401,
    403,
    (404, "No such compartment."),
    (
        409,
        "A command for it is still pending, it is the bank's last compartment, or the bank is"
        " decommissioned.",
    ),
    503,
)
async def retire_compartment(compartment_id: str) -> tuple[str, int]:
    """Retire a compartment: it leaves the bank and its configuration, its grants end; its
    history stays."""
    principal = await require_admin()
    bank_id = bank_of_compartment(compartment_id)
    await ask_bank(
        bank_id,
        c.RetireCompartment(
            actor=principal.actor,
            **_config_change(),
            compartment_id=parse_id(compartment_id, "compartment"),
        ),
    )
    return "", 204


@blueprint.post("/api/admin/locker-banks/<bank_id>/decommission")
@documented((BankOut, 200), 401, 403, 404, (409, "The bank is decommissioned already."), 503)
async def decommission(bank_id: str) -> dict[str, Any]:
    """Decommission a bank: its device credentials are revoked at once, its provisioning
    token is void, opens are refused; its history stays readable."""
    principal = await require_admin()
    bank_id = parse_id(bank_id, "locker bank")
    await ask_bank(bank_id, c.Decommission(actor=principal.actor))
    return await _bank_answer(bank_id)


@blueprint.post("/api/admin/locker-banks/<bank_id>/restart")
@documented(
    (RestartOut, 202),
    401,
    403,
    404,
    (409, "The bank's actor has not failed: there is nothing to restart."),
    503,
)
async def restart(bank_id: str) -> tuple[dict[str, Any], int]:
    """Start a bank actor that has failed (past its restart budget) again, with a fresh
    budget; the restart is recorded in the bank's history with the actor."""
    principal = await require_admin()
    bank_id = parse_id(bank_id, "locker bank")
    await ask_bank(bank_id, c.RecordActorRestarted(actor=principal.actor))
    return {"id": bank_id, "restarted": True}, 202


@blueprint.post("/api/admin/compartments/<compartment_id>/open")
@documented(
    (OperatorOpenOut, 202),
    (400, "Invalid input (also: a reason of blanks only)."),
    401,
    403,
    (404, "No such compartment."),
    (
        409,
        "The bank refused the open: `reason` says why (offline, command_pending,"
        " out_of_service, decommissioned, revocation_pending); the refusal is recorded.",
    ),
    413,
    503,
)
@admin_first
@json_body(OperatorOpenIn)
async def operator_open(compartment_id: str, data: OperatorOpenIn) -> tuple[dict[str, Any], int]:
    """Open any compartment without a grant; the request names the operator and the reason."""
    principal = await require_admin()
    if not data.reason.strip():
        raise ApiError(400, "reason must not be blank")
    bank_id = bank_of_compartment(compartment_id)
    service = ctx()
    outcome = await ask_bank(
        bank_id,
        c.RequestOperatorOpen(
            compartment_id=parse_id(compartment_id, "compartment"),
            actor=principal.actor,
            user_id=principal.user_id,
            reason=data.reason.strip(),
            transaction_id=str(uuid.uuid4()),
            command_timeout_seconds=service.settings.command_timeout,
        ),
    )
    return open_answer(outcome), 202
