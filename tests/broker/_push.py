"""The ``apply_config`` a bank gets by itself (contract §2), for tests about something else.

A bank's configuration exists from its creation and its device has applied none of it, so a
new bank's first heartbeat brings an ``apply_config``. The test device answers it (echoing the
hash); tests that then stop lockerd, rotate credentials or count commands first wait for that
round trip to end, so the push is settled and not left in flight.
"""

from __future__ import annotations

from tests.support.users import App


async def until_configured(app: App, bank_id: str) -> None:
    """Wait until the bank's device has applied the bank's configuration (the push answered)."""

    async def check() -> bool:
        status = app.context.fleet.banks.get(bank_id)
        return (
            status is not None
            and status.config_hash is not None
            and status.applied_config_hash == status.config_hash
        )

    await app.wait_until(check, what=f"bank {bank_id} applying its configuration")
