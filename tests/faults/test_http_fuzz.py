"""schemathesis over ``/openapi.json``: every route, valid and invalid requests, no 5xx.

A bounded run of what issue 14's attack did for 27,000+ requests: for every operation
schemathesis generates requests from the documented schema, positive (what the schema allows)
and negative (what it does not), once with random path ids and once with ids of resources that
exist, so the handlers get past their 404s. The requests go to the running service's real
HTTP URL (the service runs in this process, in the test's Trio loop; schemathesis and its
blocking HTTP client run in a worker thread), authenticated as the admin (HTTP Basic as a
metrics agent on ``/api/metrics``). Asserted: no answer is a 5xx, and no bank actor crashed.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import hypothesis.errors
import requests
import schemathesis
import trio
from hypothesis import HealthCheck, Phase, given
from schemathesis import GenerationMode

from tests.support.service import ADMIN_TOKEN, RunningLockerd

#: examples per operation, per generation mode and per kind of path ids (CI budget: the whole
#: run stays well under a minute per store on a shared machine)
EXAMPLES = 15
REQUEST_TIMEOUT = 15.0


@dataclass
class FuzzReport:
    sent: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    server_errors: list[str] = field(default_factory=list)
    unsatisfiable: list[str] = field(default_factory=list)

    def record(self, label: str, response: requests.Response, case: Any) -> None:
        self.sent += 1
        status = response.status_code
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if status >= 500 and len(self.server_errors) < 20:
            self.server_errors.append(
                f"{label} -> {status} {response.text[:200]!r}\n  {case.as_curl_command()[:600]}"
            )


def one_run(
    strategy: Any,
    label: str,
    headers: dict[str, str],
    base_url: str,
    session: requests.Session,
    report: FuzzReport,
    examples: int,
) -> Callable[[], None]:
    """A hypothesis test sending ``examples`` requests drawn from ``strategy``."""

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def call(case: Any) -> None:
        response = case.call(
            base_url=base_url,
            session=session,
            headers=headers,
            timeout=REQUEST_TIMEOUT,
            allow_redirects=False,
        )
        report.record(label, response, case)

    result: Callable[[], None] = call
    return result


def fuzz(
    document: dict[str, Any],
    base_url: str,
    auth: dict[str, dict[str, str]],
    known_ids: dict[str, str],
    examples: int = EXAMPLES,
) -> FuzzReport:
    """Run schemathesis over every operation of ``document`` (blocking: call it in a thread).

    ``auth`` maps a path prefix to the headers sent with it (the longest prefix wins);
    ``known_ids`` maps path parameter names to ids of existing resources.
    """
    schema = schemathesis.openapi.from_dict(document)
    report = FuzzReport()
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        prefix = max((p for p in auth if operation.path.startswith(p)), key=len, default="")
        headers = auth.get(prefix, {})
        names = {p.name for p in operation.path_parameters}
        variants: list[dict[str, str] | None] = [None]
        if names and names <= set(known_ids):
            variants.append({name: known_ids[name] for name in names})
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for path_parameters in variants:
                try:
                    strategy = operation.as_strategy(
                        generation_mode=mode, path_parameters=path_parameters
                    )
                except Exception:  # e.g. nothing negative to generate for this operation
                    continue

                call = one_run(strategy, label, headers, base_url, session, report, examples)
                try:
                    call()
                except hypothesis.errors.Unsatisfiable:
                    # e.g. negative data for an operation whose only input is a fixed path id
                    report.unsatisfiable.append(f"{label} {mode.value} {path_parameters}")
    return report


async def test_schemathesis_finds_no_5xx_on_any_route(svc: RunningLockerd) -> None:
    tenant = (await svc.admin_post("/api/admin/tenants", {"name": "acme"})).json()["id"]
    agent = (await svc.admin_post(f"/api/admin/tenants/{tenant}/agents", {"name": "a"})).json()
    user = await svc.admin_post(
        "/api/admin/users", {"email": "fuzz@x.org", "password": "long-password", "name": "F"}
    )
    bank = await svc.create_bank()
    compartment = bank["compartments"][0]["id"]
    user_id = user.json()["id"]
    granted = await svc.admin_post(
        f"/api/admin/compartments/{compartment}/grants", {"user_id": user_id}
    )
    assert granted.status_code == 201
    basic = base64.b64encode(f"{agent['mqtt_user']}:{agent['mqtt_password']}".encode()).decode()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    auth = {"/": admin, "/api/metrics": {"Authorization": f"Basic {basic}"}, "/api/mosq": {}}
    known_ids = {
        "bank_id": bank["id"],
        "compartment_id": compartment,
        "tenant_id": tenant,
        "user_id": user_id,
    }
    document = (await svc.http.get("/openapi.json")).json()
    assert len(document["paths"]) >= 15

    report = await trio.to_thread.run_sync(fuzz, document, svc.base_url, auth, known_ids)

    assert report.server_errors == [], "\n".join(report.server_errors)
    assert report.sent >= 300, report
    print(f"schemathesis: {report.sent} requests, by status {sorted(report.by_status.items())}")
    assert sum(n for status, n in report.by_status.items() if status < 300) > 20, report
    assert report.by_status.get(400, 0) > 20, report  # negative examples reached validation
    fleet = svc.context.fleet.banks[bank["id"]]
    assert (fleet.restarts, fleet.supervision) == (0, "running")
    assert all(status.restarts == 0 for status in svc.context.fleet.banks.values())
