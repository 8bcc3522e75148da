"""Hostile HTTP, by hand: every rule of contract §4's error list, on both stores.

Issue 14 findings 3, 4 and 9: NUL in any string gave a 500 (or a 503 quoting PostgreSQL) on
PostgreSQL, deep JSON a 500 ``RecursionError``, any Content-Type was parsed as JSON, 405s had
no ``Allow``. Each case here is sent to a running lockerd and must get its 4xx with the
contract's error body, name no database detail, and change nothing.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx
import pytest

from tests.support.service import ADMIN_TOKEN, MOSQ_SECRET, RunningLockerd

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
JSON = {"Content-Type": "application/json"}
LEAKS = ("psycopg", "postgres", "sqlite", "nul byte", "traceback", "datadefect", "dataerror")
NUL = "a\u0000b"
DEEP = b'{"name": "x", "extra": ' + b"[" * 1000 + b"]" * 1000 + b"}"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    lowered = body["message"].lower()
    assert not any(word in lowered for word in LEAKS), body
    return body


async def bank_count(svc: RunningLockerd) -> int:
    listed = await svc.admin_get("/api/admin/locker-banks")
    return len(listed.json())


async def new_agent(svc: RunningLockerd) -> tuple[str, dict[str, str]]:
    tenant = (await svc.admin_post("/api/admin/tenants", {"name": "acme"})).json()["id"]
    agent = (await svc.admin_post(f"/api/admin/tenants/{tenant}/agents", {"name": "a"})).json()
    basic = base64.b64encode(f"{agent['mqtt_user']}:{agent['mqtt_password']}".encode()).decode()
    return tenant, {"Authorization": f"Basic {basic}"}


def bank_body(**fields: Any) -> dict[str, Any]:
    return {"name": "Hall", "compartments": [{"number": 1, "slave_id": 1, "address": 0}], **fields}


async def test_nul_in_any_string_is_a_400_on_every_json_route(svc: RunningLockerd) -> None:
    tenant, agent_auth = await new_agent(svc)
    user = await svc.admin_post(
        "/api/admin/users", {"email": "u@x.org", "password": "long-password", "name": "U"}
    )
    assert user.status_code == 201
    bank = await svc.create_bank()
    compartment = bank["compartments"][0]["id"]
    banks_before = await bank_count(svc)
    cases: list[tuple[str, dict[str, Any], dict[str, str]]] = [
        ("/api/login", {"email": NUL, "password": "x"}, {}),
        ("/api/login", {"email": "u@x.org", "password": NUL}, {}),
        ("/api/admin/users", {"email": NUL, "password": "long-password", "name": "n"}, ADMIN),
        ("/api/admin/users", {"email": "v@x.org", "password": "long-password", "name": NUL}, ADMIN),
        ("/api/admin/users", {"email": "w@x.org", "password": NUL * 5, "name": "n"}, ADMIN),
        ("/api/admin/tenants", {"name": NUL}, ADMIN),
        (f"/api/admin/tenants/{tenant}/agents", {"name": NUL}, ADMIN),
        ("/api/admin/locker-banks", bank_body(name=NUL), ADMIN),
        ("/api/admin/locker-banks", bank_body(location=NUL), ADMIN),
        (f"/api/admin/compartments/{compartment}/grants", {"user_id": NUL}, ADMIN),
        ("/api/metrics", {"metric": NUL, "value": 1}, agent_auth),
        ("/api/metrics", {"metric": "m", "value": 1, "dedupe_id": NUL}, agent_auth),
        # a NUL in a key, or in a field no model knows, is refused all the same
        ("/api/admin/tenants", {"name": "ok", NUL: 1}, ADMIN),
        ("/api/metrics", {"metric": "m", "value": 1, "x": {"y": [NUL]}}, agent_auth),
    ]
    for path, body, headers in cases:
        response = await svc.http.post(path, json=body, headers=headers)
        assert_error(response, 400, "invalid_input")
        assert "NUL" in response.json()["message"], (path, response.text)
    assert await bank_count(svc) == banks_before
    points = await svc.admin_get(f"/api/admin/tenants/{tenant}/metrics")
    assert points.json() == []
    tenants = (await svc.admin_get("/api/admin/tenants")).json()
    assert [t["name"] for t in tenants] == ["acme"]


async def test_deep_json_and_invalid_utf8_are_400s(svc: RunningLockerd) -> None:
    _, agent_auth = await new_agent(svc)
    for path, headers in (
        ("/api/login", {}),
        ("/api/admin/tenants", ADMIN),
        ("/api/admin/locker-banks", ADMIN),
        ("/api/metrics", agent_auth),
    ):
        deep = await svc.http.post(path, content=DEEP, headers={**JSON, **headers})
        assert "32 levels" in assert_error(deep, 400, "invalid_input")["message"]
        for raw in (b'{"name": "\xff\xfe"}', b'{"name": "ok", "x": "\xc3"}'):
            bad = await svc.http.post(path, content=raw, headers={**JSON, **headers})
            assert "UTF-8" in assert_error(bad, 400, "invalid_input")["message"]
        surrogate = await svc.http.post(
            path, content=b'{"name": "\\ud800"}', headers={**JSON, **headers}
        )
        assert_error(surrogate, 400, "invalid_input")


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin-1",
        "application/merge-patch+json",
        "multipart/form-data; boundary=x",
        None,
    ],
)
async def test_a_body_that_is_not_json_is_a_415(
    svc: RunningLockerd, content_type: str | None
) -> None:
    headers = dict(ADMIN)
    if content_type is not None:
        headers["Content-Type"] = content_type
    body = json.dumps({"name": "acme"}).encode()
    response = await svc.http.post("/api/admin/tenants", content=body, headers=headers)
    assert_error(response, 415, "unsupported_media_type")
    login = await svc.http.post(
        "/api/login",
        content=b'{"email":"a@b.c","password":"x"}',
        headers={} if content_type is None else {"Content-Type": content_type},
    )
    assert_error(login, 415, "unsupported_media_type")
    assert (await svc.admin_get("/api/admin/tenants")).json() == []


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
async def test_json_with_or_without_utf8_charset_is_accepted(
    svc: RunningLockerd, content_type: str
) -> None:
    response = await svc.http.post(
        "/api/admin/tenants",
        content=b'{"name": "acme"}',
        headers={**ADMIN, "Content-Type": content_type},
    )
    assert response.status_code == 201, response.text


async def test_the_role_is_still_checked_before_the_media_type(svc: RunningLockerd) -> None:
    # contract §4: on admin routes the role is checked first, whatever the body
    response = await svc.http.post(
        "/api/admin/tenants", content=b"name=x", headers={"Content-Type": "text/plain"}
    )
    assert_error(response, 401, "unauthorized")


async def test_a_405_names_the_allowed_methods(svc: RunningLockerd) -> None:
    response = await svc.http.put("/api/admin/locker-banks", headers=ADMIN)
    assert_error(response, 405, "method_not_allowed")
    allowed = {m.strip() for m in response.headers["Allow"].split(",")}
    assert {"GET", "POST"} <= allowed
    assert "PUT" not in allowed
    deleted = await svc.http.delete("/api/login")
    assert_error(deleted, 405, "method_not_allowed")
    assert "POST" in deleted.headers["Allow"]


async def test_query_strings_with_nul_invalid_utf8_or_naive_times_are_400s(
    svc: RunningLockerd,
) -> None:
    tenant, _ = await new_agent(svc)
    path = f"/api/admin/tenants/{tenant}/metrics"
    for query in (
        "agent_id=%00",
        "metric=a%00b",
        "metric=%FF",
        "since=2026-01-01T00:00:00%00Z",
        "agent_id=%C3",
    ):
        response = await svc.http.get(f"{path}?{query}", headers=ADMIN)
        assert_error(response, 400, "invalid_input")
    for naive in ("2026-01-01T00:00:00", "2026-01-01"):
        response = await svc.http.get(path, params={"since": naive}, headers=ADMIN)
        assert "offset" in assert_error(response, 400, "invalid_input")["message"]
    fine = await svc.http.get(path, params={"since": "2026-01-01T00:00:00Z"}, headers=ADMIN)
    assert fine.status_code == 200


async def test_path_ids_with_nul_or_invalid_utf8_are_404s(svc: RunningLockerd) -> None:
    for path in (
        "/api/admin/locker-banks/%00",
        "/api/admin/locker-banks/%FF%FE",
        "/api/admin/locker-banks/a%00b/events",
        "/api/transactions/%00",
        "/api/admin/tenants/%C3/metrics",
    ):
        response = await svc.http.get(path, headers=ADMIN)
        assert_error(response, 404, "not_found")
    opened = await svc.http.post("/api/compartments/%00/open", headers=ADMIN)
    assert_error(opened, 404, "not_found")


async def test_metric_timestamps_need_a_utc_offset(svc: RunningLockerd) -> None:
    tenant, agent_auth = await new_agent(svc)
    for naive in ("2026-01-01T00:00:00", "2026-01-01", "20260101T000000"):
        response = await svc.http.post(
            "/api/metrics", json={"metric": "m", "value": 1, "timestamp": naive}, headers=agent_auth
        )
        assert "offset" in assert_error(response, 400, "invalid_input")["message"]
    stored = await svc.http.post(
        "/api/metrics",
        json={"metric": "m", "value": 1, "timestamp": "2026-01-01T01:00:00+01:00"},
        headers=agent_auth,
    )
    assert stored.status_code == 202
    points = (await svc.admin_get(f"/api/admin/tenants/{tenant}/metrics")).json()
    assert [p["timestamp"] for p in points] == ["2026-01-01T00:00:00.000Z"]


@pytest.mark.parametrize("endpoint", ["auth", "superuser", "acl"])
async def test_go_auth_bodies_with_nul_are_a_deny_never_an_error(
    svc: RunningLockerd, endpoint: str
) -> None:
    url = f"/api/mosq/{endpoint}?mosq_secret={MOSQ_SECRET}"
    fields = {
        "username": "lockerd-backend",
        "password": NUL,
        "clientid": NUL,
        "topic": NUL,
        "acc": 1,
    }
    as_json = await svc.http.post(url, json=fields)
    as_form = await svc.http.post(
        url,
        content="&".join(f"{k}=%00{v}" for k, v in fields.items() if k != "acc").encode()
        + b"&acc=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    deep = await svc.http.post(url, content=DEEP, headers=JSON)
    bad_utf8 = await svc.http.post(url, content=b'{"username": "\xff"}', headers=JSON)
    nul_secret = await svc.http.post(f"/api/mosq/{endpoint}?mosq_secret=%00", json=fields)
    for response in (as_json, as_form, deep, bad_utf8, nul_secret):
        assert response.status_code == 403, response.text
        assert response.json() == {"ok": False}
    # go-auth's form bodies stay accepted (contract §3): a well-formed one is allowed
    allowed = await svc.http.post(
        f"/api/mosq/acl?mosq_secret={MOSQ_SECRET}",
        content=b"username=provisioning_client&clientid=box&topic=locker/register/t&acc=2",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert allowed.status_code == 200


async def test_a_bank_that_cannot_answer_is_a_503_without_error_text(
    svc: RunningLockerd,
) -> None:
    """The store's error text used to reach the client in the 503's message."""
    from store.base import StoreUnavailable

    bank = await svc.create_bank()
    store = svc.context.store
    original = store.append

    async def broken(*args: object, **kwargs: object) -> object:
        raise StoreUnavailable("connection to server at 10.0.0.7 failed: FATAL secret detail")

    store.append = broken  # type: ignore[method-assign,assignment]
    try:
        response = await svc.admin_post(f"/api/admin/locker-banks/{bank['id']}/provisioning-token")
    finally:
        store.append = original  # type: ignore[method-assign]
    body = assert_error(response, 503, "unavailable")
    assert "secret detail" not in body["message"] and "10.0.0.7" not in body["message"]
    assert "try again" in body["message"]


async def test_openapi_documents_400_and_415_wherever_a_json_body_is_taken(
    svc: RunningLockerd,
) -> None:
    document = (await svc.http.get("/openapi.json")).json()
    checked = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" not in content:
                continue
            responses = set(operation["responses"])
            if path.startswith("/api/mosq/"):
                assert "415" not in responses, path  # go-auth's bodies: JSON or form
                continue
            assert {"400", "415"} <= responses, (method, path, sorted(responses))
            checked += 1
    assert checked >= 6


async def test_every_json_route_answers_415_for_a_body_that_is_not_json(
    svc: RunningLockerd,
) -> None:
    """Walks /openapi.json, so a route added later that skips ``decode_body`` is caught."""
    tenant, agent_auth = await new_agent(svc)
    bank = await svc.create_bank()
    user = await svc.admin_post(
        "/api/admin/users", {"email": "m@x.org", "password": "long-password", "name": "M"}
    )
    group = await svc.admin_post("/api/admin/groups", {"name": "Staff"})
    assert group.status_code == 201, group.text
    ids = {
        "bank_id": bank["id"],
        "compartment_id": bank["compartments"][0]["id"],
        "tenant_id": tenant,
        "user_id": user.json()["id"],
        "group_id": group.json()["id"],
        # no alert exists: the media type is refused before the id is looked up
        "alert_id": str(uuid.uuid4()),
    }
    document = (await svc.http.get("/openapi.json")).json()
    checked = []
    for path, operations in document["paths"].items():
        if path.startswith("/api/mosq/"):
            continue
        for method, operation in operations.items():
            if "application/json" not in operation.get("requestBody", {}).get("content", {}):
                continue
            url = path
            for name, value in ids.items():
                url = url.replace("{" + name + "}", value)
            assert "{" not in url, f"no id known for {path}"
            headers = agent_auth if path == "/api/metrics" else ADMIN
            response = await svc.http.request(
                method.upper(),
                url,
                content=b'{"name": "x"}',
                headers={**headers, "Content-Type": "text/plain"},
            )
            assert_error(response, 415, "unsupported_media_type")
            checked.append(f"{method} {path}")
    assert len(checked) >= 6, checked
