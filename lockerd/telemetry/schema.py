"""Plain tables of the telemetry capability and the time representation they use.

Tenants, agents and metric points are not event-sourced: they are plain tables written through
``EventStore.write`` with portable SQL (``?`` placeholders, TEXT / BIGINT / DOUBLE PRECISION).

Metric points are stored with their timestamp as BIGINT microseconds since the Unix epoch (UTC):
an integer sorts and compares exactly on every backend and is cheaper to index than text.
``seq`` is the actor's arrival counter; it orders points that share a timestamp and makes the
order of a query stable. Reads are "newest N of a tenant (and metric) since T", so the indexes
lead with the tenant, then the metric, then time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

from domain.wiretime import iso
from store.base import SqlTx

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND: Final = timedelta(microseconds=1)

TABLES_DDL: Final[tuple[str, ...]] = (
    """CREATE TABLE IF NOT EXISTS tenants (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS tenant_agents (
        id TEXT PRIMARY KEY,
        tenant_id TEXT NOT NULL REFERENCES tenants (id),
        name TEXT NOT NULL,
        mqtt_user TEXT NOT NULL UNIQUE,
        credential_hash TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS metric_points (
        seq BIGINT NOT NULL,
        tenant_id TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        metric TEXT NOT NULL,
        value DOUBLE PRECISION NOT NULL,
        ts_us BIGINT NOT NULL,
        dedupe_id TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS metric_points_by_metric"
    " ON metric_points (tenant_id, metric, ts_us, seq)",
    "CREATE INDEX IF NOT EXISTS metric_points_by_time ON metric_points (tenant_id, ts_us, seq)",
    # a dedupe id is unique per agent across MQTT and HTTP; points without one are not indexed
    "CREATE UNIQUE INDEX IF NOT EXISTS metric_points_dedupe"
    " ON metric_points (agent_id, dedupe_id) WHERE dedupe_id IS NOT NULL",
)


def create_tables(tx: SqlTx) -> None:
    for ddl in TABLES_DDL:
        tx.execute(ddl)


def max_seq(tx: SqlTx) -> int:
    rows = tx.query("SELECT MAX(seq) FROM metric_points")
    return int(rows[0][0] or 0)


def to_us(moment: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - EPOCH) // ONE_MICROSECOND


def from_us(ts_us: int) -> datetime:
    return EPOCH + timedelta(microseconds=ts_us)


def iso_us(ts_us: int) -> str:
    """A stored point's time in the wire form (milliseconds, ``Z``)."""
    return iso(from_us(ts_us))
