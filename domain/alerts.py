"""Which bank events raise an alert and which resolve one (contract §5); pure rules shared by
the bank's state (``domain.bank``) and the alerts read model (``lockerd.alerts``).

An alert is raised by exactly one stored event of a bank's stream; its id is derived from that
event's place in the stream (:func:`alert_id`), so the read model rebuilt from the history, the
bank's state and every node agree on it without storing it anywhere else.

Alert types and what ends them:

* ``uncommanded_door_opening`` (``UncommandedDoorOpening``), ``command_failed``
  (``CommandFailed``, e.g. ``DOOR_JAMMED``), ``command_timeout`` (``CommandTimedOut``): an
  incident; it stays ``open`` until an operator acknowledges it;
* ``bank_offline`` (``BankOfflineTooLong``: offline for longer than 3 heartbeat intervals):
  resolved by ``LockerBankCameOnline`` (or ``LockerBankDecommissioned``: no longer expected
  back; a decommissioned bank raises none);
* ``bank_actor_failed`` (``BankActorFailed``: past its restart budget): resolved by
  ``BankActorRestarted`` (the bank's actor started again).

Acknowledging (``AlertAcknowledged``) moves an ``open`` alert to ``acknowledged``; a resolving
event moves an ``open`` or ``acknowledged`` one to ``resolved``.
"""

from __future__ import annotations

import uuid
from typing import Final, Literal

AlertType = Literal[
    "uncommanded_door_opening",
    "command_failed",
    "command_timeout",
    "bank_offline",
    "bank_actor_failed",
]
AlertState = Literal["open", "acknowledged", "resolved"]
ALERT_STATES: Final[tuple[AlertState, ...]] = ("open", "acknowledged", "resolved")

#: stored event type -> the type of the alert it raises
RAISED_BY: Final[dict[str, AlertType]] = {
    "UncommandedDoorOpening": "uncommanded_door_opening",
    "CommandFailed": "command_failed",
    "CommandTimedOut": "command_timeout",
    "BankOfflineTooLong": "bank_offline",
    "BankActorFailed": "bank_actor_failed",
}

#: stored event type -> the type of the alerts (of the same bank) it resolves
RESOLVED_BY: Final[dict[str, AlertType]] = {
    "LockerBankCameOnline": "bank_offline",
    # a decommissioned bank is not expected back: its outage is no longer news
    "LockerBankDecommissioned": "bank_offline",
    "BankActorRestarted": "bank_actor_failed",
}

#: the alert types that end by themselves (the others are incidents: acknowledged, they are over)
SELF_RESOLVING: Final[frozenset[AlertType]] = frozenset(RESOLVED_BY.values())

ACKNOWLEDGED_BY: Final = "AlertAcknowledged"

_NAMESPACE: Final = uuid.UUID("6f1c2a8e-5b0d-4c57-9a1e-3d2f7b6c4e10")


def alert_id(bank_id: str, version: int) -> str:
    """The id of the alert raised by the event at ``version`` of the bank's stream."""
    return str(uuid.uuid5(_NAMESPACE, f"{bank_id}/{version}"))
