"""schemathesis over ``/openapi.json``: every route, valid and invalid requests, no 5xx.

A bounded run of what issue 14's attack did for 27,000+ requests (``bench/faults.py`` runs it
long); see :func:`tests.faults.fuzzing.run_http_fuzz`. Asserted: no answer is a 5xx, and no bank
actor crashed.
"""

from __future__ import annotations

from tests.faults.fuzzing import run_http_fuzz
from tests.support.service import RunningLockerd


async def test_schemathesis_finds_no_5xx_on_any_route(svc: RunningLockerd) -> None:
    report = await run_http_fuzz(svc)
    assert report.server_errors == [], "\n".join(report.server_errors)
    print(f"schemathesis: {report.sent} requests, by status {sorted(report.by_status.items())}")
    assert report.sent >= 300, report
    assert sum(n for status, n in report.by_status.items() if status < 300) > 20, report
    assert report.by_status.get(400, 0) > 20, report  # negative examples reached validation
    fleet = svc.context.fleet.banks[report.bank_id]
    assert (fleet.restarts, fleet.supervision) == (0, "running")
    assert all(status.restarts == 0 for status in svc.context.fleet.banks.values())
