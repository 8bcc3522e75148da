"""/openapi.json describes every route with its request and response schemas (contract §4).

The document is generated from an app built the way the service builds it, without running a
service (the OpenAPI route never touches it); a second test runs the service and checks that
real answers are what the document says they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import msgspec
from quart_schema.validation import QUART_SCHEMA_RESPONSE_ATTRIBUTE

from lockerd.http.app import LockerdApp, create_app
from lockerd.http.openapi import ResponseSpec
from lockerd.service import BLUEPRINTS
from tests.support.mosquitto import MosquittoBroker
from tests.support.service import MOSQ_SECRET, RunningLockerd, lockerd, test_settings

# the contract's routes (sections 3-5) that lockerd serves today
CONTRACT_ROUTES = [
    ("post", "/api/mosq/auth"),
    ("post", "/api/mosq/superuser"),
    ("post", "/api/mosq/acl"),
    ("get", "/healthz"),
    ("post", "/api/admin/locker-banks"),
    ("get", "/api/admin/locker-banks"),
    ("get", "/api/admin/locker-banks/{bank_id}"),
    ("post", "/api/admin/locker-banks/{bank_id}/provisioning-token"),
    ("post", "/api/admin/locker-banks/{bank_id}/apply-config"),
    ("get", "/api/admin/locker-banks/{bank_id}/events"),
    ("patch", "/api/admin/locker-banks/{bank_id}"),
    ("post", "/api/admin/locker-banks/{bank_id}/compartments"),
    ("patch", "/api/admin/compartments/{compartment_id}"),
    ("delete", "/api/admin/compartments/{compartment_id}"),
    ("post", "/api/admin/locker-banks/{bank_id}/decommission"),
    ("post", "/api/admin/locker-banks/{bank_id}/restart"),
    ("post", "/api/admin/compartments/{compartment_id}/open"),
    ("post", "/api/admin/users"),
    ("post", "/api/admin/compartments/{compartment_id}/grants"),
    ("delete", "/api/admin/compartments/{compartment_id}/grants/{user_id}"),
    ("post", "/api/admin/tenants"),
    ("post", "/api/admin/tenants/{tenant_id}/agents"),
    ("post", "/api/login"),
    ("get", "/api/compartments"),
    ("post", "/api/compartments/{compartment_id}/open"),
    ("post", "/api/compartments/{compartment_id}/qr"),
    ("get", "/api/transactions/{transaction_id}"),
    ("post", "/api/metrics"),
    ("get", "/api/admin/tenants/{tenant_id}/metrics"),
    ("get", "/dashboard"),
    ("get", "/console"),
    ("get", "/metrics"),
]

# the contract's bank fields (§4, "decommissioned" §5), plus the editable heartbeat interval
BANK_FIELDS = {
    "id", "name", "location", "provisioned_at", "presence", "last_seen", "config_hash",
    "applied_config_hash", "compartments", "decommissioned", "heartbeat_interval_seconds",
}  # fmt: skip
COMPARTMENT_FIELDS = {"id", "number", "slave_id", "address", "door_state", "out_of_service"}

# answers whose fields the contract spells out: (method, path, status) -> field names
CONTRACT_FIELDS = {
    ("post", "/api/admin/locker-banks", "201"): {
        "id", "name", "provisioning_token", "compartments",
    },
    ("get", "/api/admin/locker-banks/{bank_id}", "200"): BANK_FIELDS,
    ("patch", "/api/admin/locker-banks/{bank_id}", "200"): BANK_FIELDS,
    ("post", "/api/admin/locker-banks/{bank_id}/decommission", "200"): BANK_FIELDS,
    ("post", "/api/admin/locker-banks/{bank_id}/compartments", "201"): COMPARTMENT_FIELDS,
    ("patch", "/api/admin/compartments/{compartment_id}", "200"): COMPARTMENT_FIELDS,
    ("post", "/api/admin/compartments/{compartment_id}/open", "202"): {
        "transaction_id", "status",
    },
    ("post", "/api/admin/locker-banks/{bank_id}/provisioning-token", "200"): {
        "provisioning_token"
    },
    ("post", "/api/admin/locker-banks/{bank_id}/apply-config", "202"): {"transaction_id"},
    ("post", "/api/admin/users", "201"): {"id"},
    ("post", "/api/admin/tenants", "201"): {"id"},
    ("post", "/api/admin/tenants/{tenant_id}/agents", "201"): {
        "agent_id", "mqtt_user", "mqtt_password",
    },
    ("post", "/api/login", "200"): {"token"},
    ("post", "/api/compartments/{compartment_id}/open", "202"): {"transaction_id", "status"},
    ("post", "/api/compartments/{compartment_id}/qr", "201"): {"qr_payload", "expires_at"},
    ("get", "/api/transactions/{transaction_id}", "200"): {
        "transaction_id", "action", "status", "error_code", "message", "requested_at",
        "completed_at", "late_answer",
    },
    ("get", "/healthz", "200"): {"status", "mqtt", "store", "node", "banks"},
    ("post", "/api/mosq/auth", "200"): {"ok"},
}  # fmt: skip

PATH_PARAMETER = re.compile(r"<(?:[^:<>]*:)?([^<>]+)>")
REF_PREFIX = "#/components/schemas/"


def build_app() -> LockerdApp:
    return create_app(cast(Any, None), BLUEPRINTS)


async def openapi_document() -> dict[str, Any]:
    response = await build_app().test_client().get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = await response.get_json()
    return document


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].removeprefix(REF_PREFIX)]
    return schema


async def test_every_route_is_documented_with_its_answers() -> None:
    app = build_app()
    document = await openapi_document()
    paths = document["paths"]
    documented_routes = 0
    for rule in app.url_map.iter_rules():
        if rule.websocket or rule.endpoint in ("openapi", "static"):
            continue
        path = PATH_PARAMETER.sub(r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation = paths.get(path, {}).get(method.lower())
            assert operation is not None, f"{method} {path} is not in /openapi.json"
            responses = operation["responses"]
            successes = [r for status, r in responses.items() if status.startswith("2")]
            assert successes, f"{method} {path} documents no 2xx answer"
            assert all("content" in r or r["description"] for r in successes), (method, path)
            for status, answer in responses.items():
                if status.startswith("2"):
                    continue
                assert answer["description"], (method, path, status)
                if not path.startswith("/api/mosq/") and path != "/healthz":
                    assert answer["content"]["application/json"]["schema"] == {
                        "$ref": REF_PREFIX + "ErrorOut"
                    }, (method, path, status)
            documented_routes += 1
    assert documented_routes >= len(CONTRACT_ROUTES)


async def test_every_reference_resolves() -> None:
    document = await openapi_document()
    schemas = document["components"]["schemas"]
    assert schemas
    found = set(refs(document))
    assert found
    for ref in found:
        assert ref.startswith(REF_PREFIX), ref
        assert ref.removeprefix(REF_PREFIX) in schemas, f"{ref} does not resolve"
    # no component is left unused
    assert {ref.removeprefix(REF_PREFIX) for ref in found} == set(schemas)


async def test_the_contract_routes_are_present() -> None:
    paths = (await openapi_document())["paths"]
    missing = [(m, p) for m, p in CONTRACT_ROUTES if m not in paths.get(p, {})]
    assert not missing


async def test_answers_have_the_contract_fields() -> None:
    document = await openapi_document()
    for (method, path, status), fields in CONTRACT_FIELDS.items():
        answer = document["paths"][path][method]["responses"][status]
        schema = resolve(document, answer["content"]["application/json"]["schema"])
        assert set(schema["properties"]) == fields, (method, path, status)
    error = document["components"]["schemas"]["ErrorOut"]
    assert error["required"] == ["error", "message"]
    assert set(error["properties"]) == {"error", "message", "retry_after", "reason"}
    bank = document["components"]["schemas"]["BankOut"]
    assert bank["properties"]["presence"] == {"enum": ["offline", "online", "unknown"]}
    assert {"type": "null"} in bank["properties"]["last_seen"]["anyOf"]


async def test_request_bodies_and_query_strings_stay_documented() -> None:
    document = await openapi_document()
    paths = document["paths"]
    create = paths["/api/admin/locker-banks"]["post"]["requestBody"]
    schema = resolve(document, create["content"]["application/json"]["schema"])
    assert schema["required"] == ["name", "compartments"]
    for path in ("/api/admin/users", "/api/login", "/api/admin/tenants", "/api/metrics"):
        assert "requestBody" in paths[path]["post"], path
    query = paths["/api/admin/tenants/{tenant_id}/metrics"]["get"]["parameters"]
    assert {p["name"] for p in query if p["in"] == "query"} == {
        "agent_id", "metric", "since", "limit", "format",
    }  # fmt: skip
    assert paths["/metrics"]["get"]["responses"]["200"]["content"]["text/plain"]["schema"] == {
        "type": "string"
    }
    assert "content" not in paths["/api/logout"]["post"]["responses"]["204"]


# ------------------------------------------------------------------ real answers


class Checker:
    """Sends requests to a running lockerd and checks each answer against the documentation."""

    def __init__(self, svc: RunningLockerd) -> None:
        self.svc = svc
        self.app = create_app(svc.context, BLUEPRINTS)
        self.urls = self.app.url_map.bind("localhost")
        self.checked = 0

    async def __call__(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = await self.svc.http.request(method, url, **kwargs)
        endpoint, _ = self.urls.match(urlsplit(url).path, method=method)
        answers = getattr(self.app.view_functions[endpoint], QUART_SCHEMA_RESPONSE_ATTRIBUTE, {})
        status = response.status_code
        assert status in answers, f"{method} {url} answered {status}, not documented"
        model: Any = answers[status][0]
        media = response.headers.get("content-type", "").split(";")[0]
        if isinstance(model, ResponseSpec):
            if not model.content:
                assert response.content == b"", (method, url)
                return response
            by_media = {key.split(";")[0]: m for key, m in model.content.items()}
            assert media in by_media, (method, url, media)
            model = by_media[media]
            if model is None:
                return response
        assert media == "application/json", (method, url)
        conforms(response.json(), model)
        self.checked += 1
        return response


def conforms(value: Any, model: Any) -> None:
    """``value`` is exactly an instance of ``model``: right types, no field more or less."""
    converted = msgspec.convert(value, model, strict=True)
    assert msgspec.to_builtins(converted) == value


async def test_real_answers_are_what_the_document_says(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with lockerd(test_settings(mosquitto.url, tmp_path / "l.db")) as svc:
        ask = Checker(svc)
        admin = svc.admin_headers()
        await ask("GET", "/healthz")
        await ask("GET", "/metrics")
        await ask("GET", "/dashboard")
        await ask("GET", "/dashboard/dashboard.js")
        await ask("GET", "/dashboard/nothing.js")
        await ask("GET", "/console")
        await ask("GET", "/console/app.js")
        await ask("GET", "/console/nothing.js")

        body = {"name": "B", "compartments": [{"number": 1, "slave_id": 1, "address": 0}]}
        assert (await ask("POST", "/api/admin/locker-banks", json=body)).status_code == 401
        created = await ask("POST", "/api/admin/locker-banks", json=body, headers=admin)
        assert created.status_code == 201
        bank = created.json()
        compartment = bank["compartments"][0]["id"]
        await ask("POST", "/api/admin/locker-banks", json={"name": "B"}, headers=admin)
        await ask("GET", "/api/admin/locker-banks", headers=admin)
        await ask("GET", f"/api/admin/locker-banks/{bank['id']}", headers=admin)
        await ask("GET", f"/api/admin/locker-banks/{compartment}", headers=admin)
        await ask("GET", f"/api/admin/locker-banks/{bank['id']}/events", headers=admin)
        await ask("POST", f"/api/admin/locker-banks/{bank['id']}/provisioning-token", headers=admin)
        applied = await ask(
            "POST", f"/api/admin/locker-banks/{bank['id']}/apply-config", headers=admin
        )
        await ask("POST", f"/api/admin/locker-banks/{bank['id']}/apply-config", headers=admin)

        user_body = {"email": "u@example.org", "password": "password-1", "name": "U"}
        user = (await ask("POST", "/api/admin/users", json=user_body, headers=admin)).json()
        await ask("POST", "/api/admin/users", json=user_body, headers=admin)
        grants = f"/api/admin/compartments/{compartment}/grants"
        await ask("POST", grants, json={"user_id": user["id"]}, headers=admin)
        expiring = {"user_id": user["id"], "expires_at": "2999-01-01T00:00:00Z"}
        await ask("POST", grants, json=expiring, headers=admin)
        await ask("POST", "/api/login", json={"email": "u@example.org", "password": "wrong"})
        login = await ask(
            "POST", "/api/login", json={"email": "u@example.org", "password": "password-1"}
        )
        mine = {"Authorization": f"Bearer {login.json()['token']}"}
        await ask("GET", "/api/admin/locker-banks", headers=mine)
        await ask("GET", "/api/compartments", headers=mine)
        opened = await ask("POST", f"/api/compartments/{compartment}/open", headers=mine)
        assert opened.json()["reason"] == "offline"
        await ask("POST", f"/api/compartments/{compartment}/qr", headers=mine)
        transaction = applied.json()["transaction_id"]
        await ask("GET", f"/api/transactions/{transaction}", headers=admin)
        await ask("GET", f"/api/transactions/{transaction}", headers=mine)
        await ask("DELETE", f"{grants}/{user['id']}", headers=admin)
        await ask("DELETE", f"{grants}/{user['id']}", headers=admin)
        await ask("POST", f"/api/compartments/{compartment}/qr", headers=mine)
        await ask("POST", "/api/logout", headers=mine)

        tenant = (await ask("POST", "/api/admin/tenants", json={"name": "T"}, headers=admin)).json()
        agents = f"/api/admin/tenants/{tenant['id']}/agents"
        agent = (await ask("POST", agents, json={"name": "A"}, headers=admin)).json()
        await ask("GET", "/api/admin/tenants", headers=admin)
        point = {"metric": "temp", "value": 21.5}
        await ask("POST", "/api/metrics", json=point)
        basic = httpx.BasicAuth(agent["mqtt_user"], agent["mqtt_password"])
        await ask("POST", "/api/metrics", json=point, auth=basic)
        await ask("POST", "/api/metrics", json={"metric": ""}, auth=basic)
        points = f"/api/admin/tenants/{tenant['id']}/metrics"
        assert (await ask("GET", points, headers=admin)).json()
        await ask("GET", f"{points}?format=csv", headers=admin)
        await ask("GET", f"{points}?limit=0", headers=admin)

        secret = f"?mosq_secret={MOSQ_SECRET}"
        await ask("POST", f"/api/mosq/superuser{secret}", json={"username": "lockerd-backend"})
        await ask("POST", f"/api/mosq/auth{secret}", json={"username": "x", "password": "y"})
        await ask("POST", "/api/mosq/acl", json={"username": "x", "topic": "t", "acc": 1})
        assert ask.checked >= 30
