"""Every read model the service keeps, for the store (``lockerd serve``, ``migrate``,
``import``, ``rebuild-projections``), and the one-time refill when new ones arrive.

A projection added to an existing database starts empty (its DDL creates the tables, nothing
fills them from the history). :func:`refill_once` runs ``rebuild_projections`` once per
database for each :data:`REFILLS` name not yet recorded in ``table_migrations``, so an upgraded
database gets its new read models (grants with their authors, groups, the audit log) filled
from the history it already has.
"""

from __future__ import annotations

from lockerd.alerts.projection import ALERTS, settle_history
from lockerd.audit.projection import AUDIT
from lockerd.banks.projections import PROJECTIONS as BANK_PROJECTIONS
from lockerd.users.projections import ACCESS_GRANTS, GROUPS
from store.base import Projection, SqlTx, Store

EVERY_PROJECTION: tuple[Projection, ...] = (
    *BANK_PROJECTIONS,
    ACCESS_GRANTS,
    GROUPS,
    AUDIT,
    ALERTS,
)

#: names of the refills applied once per database (never edit a released one; append)
REFILLS: tuple[str, ...] = ("projections.people-1", "projections.alerts-1")
#: the refill that first fills the alerts: the alerts of the history it finds are not news,
#: so their webhook deliveries are settled, not sent
ALERTS_REFILL = "projections.alerts-1"


async def refill_once(store: Store) -> bool:
    """Rebuild every projection if a refill of :data:`REFILLS` is not recorded yet; True if
    it ran. Needs ``table_migrations`` (``lockerd.users.tables.create_tables``). Two nodes
    starting at once may both rebuild: a rebuild is deterministic, so that is harmless."""

    def missing(tx: SqlTx) -> list[str]:
        done = {row[0] for row in tx.query("SELECT name FROM table_migrations")}
        return [name for name in REFILLS if name not in done]

    names = await store.read(missing)
    if not names:
        return False
    await store.rebuild_projections()
    if ALERTS_REFILL in names:
        await store.write(settle_history)

    def record(tx: SqlTx) -> None:
        for name in names:
            tx.execute(
                "INSERT INTO table_migrations (name) VALUES (?) ON CONFLICT (name) DO NOTHING",
                (name,),
            )

    await store.write(record)
    return True
