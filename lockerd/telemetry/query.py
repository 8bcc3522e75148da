"""Time-ordered reads of metric points for the admin API.

"The newest ``limit`` points since T, oldest first": the query walks an index backwards from the
newest point (``ORDER BY ts_us DESC, seq DESC LIMIT n``) and the rows are reversed here, so the
cost is proportional to ``limit``, not to the size of the tenant's history.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from lockerd.telemetry.schema import iso_us
from store.base import SqlTx
from store.filters import where

DEFAULT_LIMIT: Final = 1000
MAX_LIMIT: Final = 100_000
CSV_HEADER: Final = ("agent_id", "metric", "value", "timestamp")


@dataclass(frozen=True, slots=True)
class PointQuery:
    tenant_id: str
    agent_id: str | None = None
    metric: str | None = None
    since_us: int | None = None
    limit: int = DEFAULT_LIMIT


@dataclass(frozen=True, slots=True)
class PointRow:
    agent_id: str
    metric: str
    value: float
    ts_us: int

    def as_json(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "metric": self.metric,
            "value": self.value,
            "timestamp": iso_us(self.ts_us),
        }


def read_points(query: PointQuery) -> Callable[[SqlTx], list[PointRow]]:
    """A read function for ``EventStore.read``."""
    clause, params = where(
        [
            ("tenant_id = ?", query.tenant_id),
            ("agent_id = ?", query.agent_id),
            ("metric = ?", query.metric),
            ("ts_us >= ?", query.since_us),
        ]
    )
    params.append(query.limit)
    sql = (
        "SELECT agent_id, metric, value, ts_us FROM metric_points"
        f"{clause} ORDER BY ts_us DESC, seq DESC LIMIT ?"
    )

    def read(tx: SqlTx) -> list[PointRow]:
        rows = tx.query(sql, params)
        rows.reverse()
        return [PointRow(str(a), str(m), float(v), int(t)) for a, m, v, t in rows]

    return read


def to_csv(rows: Sequence[PointRow]) -> str:
    """RFC 4180 CSV with a header row; values as Python's shortest round-trip float text."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    for row in rows:
        writer.writerow((row.agent_id, row.metric, repr(row.value), iso_us(row.ts_us)))
    return out.getvalue()
