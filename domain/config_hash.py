"""The Modbus configuration a bank is told to apply, and its hash.

The hash definition is part of the device contract (docs/firmware.md): firmware computes the
same bytes and acknowledges with ``applied_config_hash``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable


def config_compartments(
    compartments: Iterable[tuple[int, int, int]],
) -> list[dict[str, int]]:
    """``[{"id": number, "slaveId": slave_id, "address": address}]`` sorted by number."""
    return [
        {"id": number, "slaveId": slave_id, "address": address}
        for number, slave_id, address in sorted(compartments)
    ]


def config_hash(compartments: list[dict[str, int]], heartbeat_interval_seconds: int) -> str:
    canonical = json.dumps(
        {"compartments": compartments, "heartbeat_interval_seconds": heartbeat_interval_seconds},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def entries_hash(
    compartments: Iterable[tuple[int, int, int]], heartbeat_interval_seconds: int
) -> str:
    """The ``config_hash`` of ``(number, slave_id, address)`` compartments and an interval.

    What a bank's state, its creation event and the read model of an older history (whose
    ``LockerBankCreated`` carries no hash) all compute, so they agree.
    """
    return config_hash(config_compartments(compartments), heartbeat_interval_seconds)
