"""The fuzzers of the fault suite, shared by ``tests/faults`` (bounded runs) and
``bench/faults.py`` (long runs).

* HTTP: schemathesis over ``/openapi.json`` (:func:`run_http_fuzz`): for every operation,
  requests generated from the documented schema, positive (what the schema allows) and negative
  (what it does not), once with random path ids and once with ids of resources that exist, so
  the handlers get past their 404s. They go to the service's real HTTP URL; schemathesis and
  its blocking HTTP client run in a worker thread while the service runs in the caller's Trio
  loop. Authenticated as the admin (HTTP Basic as a metrics agent on ``/api/metrics``).
* MQTT: hypothesis-generated messages of every topic family (:func:`run_mqtt_fuzz`), malformed
  by construction (a mutation that contract §2 says makes a message malformed: NUL or invalid
  UTF-8 anywhere, nesting deeper than 32 levels, a timestamp without an offset, a bad
  ``uptime_seconds``, a missing or mistyped field, truncated JSON, random bytes, an oversized
  payload, or a topic that is not one of the contract's), interleaved with well-formed
  heartbeats, published through a real broker. After each batch: every message was counted
  exactly once in ``lockerd_inbound_messages_total`` (the malformed ones ``dropped``, the
  heartbeats ``processed``), no bank actor crashed, and the bank's history, transactions and
  stored metric points are exactly as before. Hypothesis drives the batches from a worker
  thread; each batch is published and checked in the Trio loop (``trio.from_thread.run``), so a
  failure shrinks to a minimal batch.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import hypothesis.errors
import requests
import schemathesis
import trio
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from schemathesis import GenerationMode

from domain import commands as c
from gateway.mqtt import MqttClient, open_mqtt_client
from tests.support.device import client_settings, now_iso
from tests.support.service import ADMIN_TOKEN, RunningLockerd, eventually

#: examples per operation, per generation mode and per kind of path ids
HTTP_EXAMPLES = 15
REQUEST_TIMEOUT = 15.0
#: how long an event stream is read (see :func:`one_run`)
STREAM_TIMEOUT = 1.0
#: hypothesis examples (batches of malformed messages) of one MQTT run
MQTT_BATCHES = 25
MQTT_BATCH_SIZE = 40
WAIT = 30.0

Json = Any

# =========================================================================== HTTP


@dataclass
class FuzzReport:
    bank_id: str = ""
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
    derandomize: bool = True,
    streaming: bool = False,
) -> Callable[[], None]:
    """A hypothesis test sending ``examples`` requests drawn from ``strategy``.

    ``streaming``: the operation answers with a stream that has no end (server-sent events),
    which schemathesis reads until the request timeout has passed in total; such operations
    get :data:`STREAM_TIMEOUT`, enough for the status, headers and first events, or every
    example would take the whole :data:`REQUEST_TIMEOUT`.
    """

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def call(case: Any) -> None:
        response = case.call(
            base_url=base_url,
            session=session,
            headers=headers,
            timeout=STREAM_TIMEOUT if streaming else REQUEST_TIMEOUT,
            allow_redirects=False,
        )
        report.record(label, response, case)

    result: Callable[[], None] = call
    return result


def answers_a_stream(document: dict[str, Any], method: str, path: str) -> bool:
    """Whether the operation's 200 answer is documented as ``text/event-stream``."""
    responses = document["paths"][path][method.lower()].get("responses", {})
    return "text/event-stream" in responses.get("200", {}).get("content", {})


def fuzz(
    document: dict[str, Any],
    base_url: str,
    auth: dict[str, dict[str, str]],
    known_ids: dict[str, str],
    examples: int = HTTP_EXAMPLES,
    derandomize: bool = True,
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
        streaming = answers_a_stream(document, operation.method, operation.path)
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

                call = one_run(
                    strategy,
                    label,
                    headers,
                    base_url,
                    session,
                    report,
                    examples,
                    derandomize,
                    streaming,
                )
                try:
                    call()
                except hypothesis.errors.Unsatisfiable:
                    # e.g. negative data for an operation whose only input is a fixed path id
                    report.unsatisfiable.append(f"{label} {mode.value} {path_parameters}")
    return report


async def run_http_fuzz(
    svc: RunningLockerd, examples: int = HTTP_EXAMPLES, *, derandomize: bool = True
) -> FuzzReport:
    """Create one of each resource, then fuzz every operation (see the module doc).

    ``derandomize`` (the CI default) makes every run send the same requests; the bench turns it
    off so that repeated runs explore further."""
    tenant = (await svc.admin_post("/api/admin/tenants", {"name": "acme"})).json()["id"]
    agent = (await svc.admin_post(f"/api/admin/tenants/{tenant}/agents", {"name": "a"})).json()
    user = await svc.admin_post(
        "/api/admin/users",
        {"email": f"fuzz-{uuid.uuid4().hex[:6]}@x.org", "password": "long-password", "name": "F"},
    )
    bank = await svc.create_bank()
    compartment = bank["compartments"][0]["id"]
    user_id = user.json()["id"]
    granted = await svc.admin_post(
        f"/api/admin/compartments/{compartment}/grants", {"user_id": user_id}
    )
    assert granted.status_code == 201
    # an alert to acknowledge: a door that opened by itself, as the device would report it
    await svc.context.registry.ask(
        bank["id"],
        c.RecordDeviceEvent(
            event="door_state_changed",
            event_id=None,
            data={"compartment_number": 1, "state": "open"},
        ),
    )
    (alert,) = (await svc.admin_get("/api/admin/alerts")).json()
    basic = base64.b64encode(f"{agent['mqtt_user']}:{agent['mqtt_password']}".encode()).decode()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    auth = {"/": admin, "/api/metrics": {"Authorization": f"Basic {basic}"}, "/api/mosq": {}}
    known_ids = {
        "bank_id": bank["id"],
        "compartment_id": compartment,
        "tenant_id": tenant,
        "user_id": user_id,
        "alert_id": alert["id"],
    }
    document = (await svc.http.get("/openapi.json")).json()
    assert len(document["paths"]) >= 15
    report: FuzzReport = await trio.to_thread.run_sync(
        fuzz, document, svc.base_url, auth, known_ids, examples, derandomize
    )
    report.bank_id = bank["id"]
    return report


# =========================================================================== MQTT


@dataclass
class Target:
    """What the generated messages aim at: one online bank with a pending command, and a
    tenant's metrics agent."""

    bank_id: str
    transaction_id: str
    tenant_id: str
    agent_id: str


# --------------------------------------------------------------------------- well-formed bases


def heartbeat(uptime: int) -> dict[str, Any]:
    return {
        "type": "state",
        "state": "heartbeat",
        "session_id": "s-1",
        "data": {"timestamp": now_iso(), "uptime_seconds": uptime},
    }


def bases(target: Target) -> dict[str, tuple[str, dict[str, Any], tuple[str, ...]]]:
    """Per family: topic, a well-formed payload, and its required fields."""
    bank = target.bank_id
    return {
        "state": (f"locker/{bank}/state", heartbeat(10**6), ("type", "state")),
        "response": (
            f"locker/{bank}/response",
            {
                "type": "command_response",
                "action": "open_compartment",
                "result": "success",
                "transaction_id": target.transaction_id,
                "timestamp": now_iso(),
                "message": "door ok",
            },
            ("type", "action", "result", "transaction_id", "timestamp"),
        ),
        "event": (
            f"locker/{bank}/event",
            {
                "type": "event",
                "event": "door_state_changed",
                "event_id": str(uuid.uuid4()),
                "timestamp": now_iso(),
                "data": {"compartment_number": 1, "door_state": "open"},
            },
            ("type", "event", "timestamp", "data"),
        ),
        "metric": (
            f"metrics/{target.tenant_id}/{target.agent_id}/temp",
            {"value": 21.5, "timestamp": now_iso(), "dedupe_id": str(uuid.uuid4())},
            ("value",),
        ),
        "register": ("locker/register/no-such-token", {"client_id": "fuzz-box"}, ()),
    }


# --------------------------------------------------------------------------- mutations


def _strings(value: Json, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every string value in a JSON document."""
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _strings(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _strings(v, (*path, i))]
    return []


def _set(document: Json, path: tuple[Any, ...], value: Json) -> None:
    for key in path[:-1]:
        document = document[key]
    document[path[-1]] = value


def _get(document: Json, path: tuple[Any, ...]) -> Json:
    for key in path:
        document = document[key]
    return document


@st.composite
def malformed(draw: st.DrawFn, family: str, target: Target) -> tuple[str, bytes, str]:
    """One malformed message of ``family``: (topic, payload, what was done to it)."""
    topic, base, required = bases(target)[family]
    document = json.loads(json.dumps(base))
    strings = _strings(document)
    kinds = ["nul", "utf8", "deep", "truncated", "garbage", "huge", "not_object"]
    if strings:
        kinds.append("nul_in_key")
    if required:
        kinds += ["missing", "wrong_type"]
    if family in ("state", "response", "event", "metric"):
        kinds.append("naive_time")
    if family == "state":
        kinds.append("uptime")
    if family != "register":
        kinds.append("topic")
    kind = draw(st.sampled_from(kinds))
    if kind == "nul":
        path = draw(st.sampled_from(strings))
        text = _get(document, path)
        at = draw(st.integers(0, len(text)))
        _set(document, path, text[:at] + "\x00" + text[at:])
        return topic, json.dumps(document).encode(), kind
    if kind == "nul_in_key":
        document["x\x00" + draw(st.text(max_size=3))] = draw(st.integers())
        return topic, json.dumps(document).encode(), kind
    if kind == "utf8":
        path = draw(st.sampled_from(strings))
        marker = "\ue000MARK\ue000"
        _set(document, path, marker)
        bad = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80abc", b"\xf8\x88"]))
        raw = json.dumps(document, ensure_ascii=False).encode()
        return topic, raw.replace(marker.encode(), bad), kind
    if kind == "deep":
        depth = draw(st.integers(33, 3000))
        raw = json.dumps(document).encode()
        nested = b"[" * depth + b"]" * depth
        return topic, raw[:-1] + b', "deep": ' + nested + b"}", kind
    if kind == "truncated":
        raw = json.dumps(document).encode()
        return topic, raw[: draw(st.integers(0, len(raw) - 1))], kind
    if kind == "garbage":
        raw = draw(st.binary(max_size=200))
        hypothesis.assume(not raw.strip().startswith(b"{"))
        return topic, raw, kind
    if kind == "huge":
        document["padding"] = "x" * draw(st.integers(16 * 1024, 40 * 1024))
        return topic, json.dumps(document).encode(), kind
    if kind == "not_object":
        value = draw(st.one_of(st.integers(), st.text(max_size=20), st.lists(st.integers())))
        return topic, json.dumps(value).encode(), kind
    if kind == "missing":
        del document[draw(st.sampled_from(required))]
        return topic, json.dumps(document).encode(), kind
    if kind == "wrong_type":
        field = draw(st.sampled_from(required))
        current = document[field]
        replacement = draw(
            st.one_of(st.integers(), st.none(), st.lists(st.integers(), max_size=2))
            if isinstance(current, str | dict)
            else st.one_of(st.text(max_size=5), st.none(), st.booleans())
        )
        document[field] = replacement
        return topic, json.dumps(document).encode(), kind
    if kind == "naive_time":
        naive = draw(st.sampled_from(["2026-01-01T00:00:00", "2026-01-01", "20260101T000000"]))
        if family == "state":
            document["data"]["timestamp"] = naive
        else:
            document["timestamp"] = naive
        return topic, json.dumps(document).encode(), kind
    if kind == "uptime":
        document["data"]["uptime_seconds"] = draw(
            st.sampled_from([-5, -1, 2**64, 2**53 + 1, 1.5, "10", True])
        )
        return topic, json.dumps(document).encode(), kind
    # kind == "topic": a topic no contract family has, inside lockerd's subscriptions
    bank = target.bank_id
    bad_topic = draw(
        st.sampled_from(
            {
                "state": [f"locker/{bank.upper()}/state", "locker//state", "locker/x/state"],
                "response": [f"locker/{bank[:-1]}/response", "locker//response"],
                "event": ["locker//event", f"locker/{bank}0/event", "locker/BANK/event"],
                "metric": [
                    f"metrics/{target.tenant_id}/{target.agent_id}",
                    f"metrics/{target.tenant_id}//temp",
                    f"metrics/{target.tenant_id}/{target.agent_id}/temp/extra",
                    f"metrics/not-a-tenant/{target.agent_id}/temp",
                    "metrics",
                    "metrics/",
                ],
            }[family]
        )
    )
    return bad_topic, json.dumps(base).encode(), kind


def messages(target: Target, size: int) -> st.SearchStrategy[list[tuple[str, bytes, str]]]:
    families = ["state", "response", "event", "metric", "register"]
    one = st.sampled_from(families).flatmap(lambda family: malformed(family, target))
    return st.lists(one, min_size=1, max_size=size)


# --------------------------------------------------------------------------- the checks


def inbound(svc: RunningLockerd) -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = {}
    for family in svc.context.metrics.registry.collect():
        if family.name != "lockerd_inbound_messages":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = (sample.labels["kind"], sample.labels["outcome"])
                counts[key] = sample.value
    return counts


def kind_of(topic: str) -> str:
    parts = topic.split("/")
    if parts[0] == "metrics":
        return "metric"
    if parts[1] == "register":
        return "register"
    return {"state": "state", "response": "response", "event": "event"}.get(parts[-1], "unknown")


async def observed(svc: RunningLockerd, target: Target) -> tuple[Any, ...]:
    """Everything rejected input must not change: history, transactions, points, doors."""
    history = [
        (ev.type, dict(ev.data)) for ev in await svc.context.store.read_stream(target.bank_id)
    ]
    tx = (await svc.admin_get(f"/api/transactions/{target.transaction_id}")).json()
    points = (await svc.admin_get(f"/api/admin/tenants/{target.tenant_id}/metrics")).json()
    bank = (await svc.admin_get(f"/api/admin/locker-banks/{target.bank_id}")).json()
    bank.pop("last_seen", None)  # the interleaved heartbeats move it, and only it
    return history, tx, points, bank


async def setup(svc: RunningLockerd, client: MqttClient) -> Target:
    tenant = (await svc.admin_post("/api/admin/tenants", {"name": "acme"})).json()["id"]
    agent = (await svc.admin_post(f"/api/admin/tenants/{tenant}/agents", {"name": "a"})).json()
    bank = await svc.create_bank(heartbeat_interval_seconds=3600)
    await client.publish(f"locker/{bank['id']}/state", json.dumps(heartbeat(1)).encode(), qos=1)

    async def online() -> bool:
        view = (await svc.admin_get(f"/api/admin/locker-banks/{bank['id']}")).json()
        return bool(view["presence"] == "online")

    await eventually(online, within=WAIT)
    email = f"f-{uuid.uuid4().hex[:8]}@x.org"
    user = await svc.admin_post(
        "/api/admin/users", {"email": email, "password": "long-password", "name": "F"}
    )
    compartment = bank["compartments"][0]["id"]
    await svc.admin_post(
        f"/api/admin/compartments/{compartment}/grants", {"user_id": user.json()["id"]}
    )
    token = (
        await svc.http.post("/api/login", json={"email": email, "password": "long-password"})
    ).json()["token"]
    opened = await svc.http.post(
        f"/api/compartments/{compartment}/open", headers={"Authorization": f"Bearer {token}"}
    )
    assert opened.status_code == 202, opened.text

    async def dispatched() -> bool:
        # the open (and an automatic apply_config) are recorded dispatched once the broker has
        # them; that must not happen in the middle of a batch (it would be a state change)
        history = await svc.context.store.read_stream(bank["id"])
        requested = {
            ev.data["transaction_id"]
            for ev in history
            if ev.type in ("CompartmentOpeningRequested", "ConfigApplyRequested")
        }
        sent = {ev.data["transaction_id"] for ev in history if ev.type == "CommandDispatched"}
        return bool(requested) and requested <= sent

    await eventually(dispatched, within=WAIT)
    return Target(bank["id"], opened.json()["transaction_id"], tenant, agent["agent_id"])


@dataclass
class MqttFuzzReport:
    batches: int = 0
    malformed_sent: int = 0
    well_formed_sent: int = 0
    by_mutation: dict[str, int] = field(default_factory=dict)


async def run_mqtt_fuzz(
    svc: RunningLockerd,
    broker_url: str,
    batches: int = MQTT_BATCHES,
    batch_size: int = MQTT_BATCH_SIZE,
) -> MqttFuzzReport:
    """Publish ``batches`` hypothesis-generated batches and check each (see the module doc);
    raises AssertionError (shrunk by hypothesis) on the first batch that breaks a rule."""
    report = MqttFuzzReport()
    settings = client_settings(broker_url, f"fuzzer-{uuid.uuid4().hex[:8]}")
    async with open_mqtt_client(settings) as client:
        target = await setup(svc, client)
        uptime = 100
        clustered = svc.context.cluster is not None

        def delivered(topic: str) -> bool:
            """Whether the broker hands ``topic`` to lockerd at all: with a cluster (PostgreSQL)
            bank topics are subscribed per owned bank, so a malformed bank level never
            arrives (and is not a message lockerd received)."""
            if not clustered or not topic.startswith("locker/"):
                return True
            return topic.startswith("locker/register/") or topic.split("/")[1] == target.bank_id

        async def publish_and_check(batch: list[tuple[str, bytes, str]]) -> None:
            nonlocal uptime
            before_counts = inbound(svc)
            before = await observed(svc, target)
            expected: dict[tuple[str, str], float] = {}
            for n, (topic, payload, what) in enumerate(batch):
                report.by_mutation[what] = report.by_mutation.get(what, 0) + 1
                await client.publish(topic, payload, qos=1)
                if delivered(topic):
                    key = (kind_of(topic), "dropped")
                    expected[key] = expected.get(key, 0) + 1
                if n % 5 == 0:  # well-formed traffic in between: processed, changes nothing
                    uptime += 1
                    beat = json.dumps(heartbeat(uptime)).encode()
                    await client.publish(f"locker/{target.bank_id}/state", beat, qos=1)
                    expected[("state", "processed")] = expected.get(("state", "processed"), 0) + 1
                    report.well_formed_sent += 1
            report.malformed_sent += len(batch)
            report.batches += 1

            def delta() -> dict[tuple[str, str], float]:
                now = inbound(svc)
                changed = {k: now.get(k, 0) - before_counts.get(k, 0) for k in now}
                return {k: v for k, v in changed.items() if v}

            async def counted() -> bool:
                return sum(delta().values()) >= sum(expected.values())

            await eventually(counted, within=WAIT)
            await trio.testing.wait_all_tasks_blocked(cushion=0.05)
            shown = [(topic, payload[:300], what) for topic, payload, what in batch]
            assert delta() == expected, (delta(), expected, shown)
            after = await observed(svc, target)
            assert after == before, (before, after, shown)
            status = svc.context.fleet.banks[target.bank_id]
            assert (status.restarts, status.supervision) == (0, "running")
            assert status.presence == "online"

        @hypothesis.settings(
            max_examples=batches,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(batch=messages(target, batch_size))
        def run(batch: list[tuple[str, bytes, str]]) -> None:
            trio.from_thread.run(publish_and_check, batch)

        await trio.to_thread.run_sync(run)
    restarts = svc.context.metrics.registry.get_sample_value(
        "lockerd_actor_restarts_total", {"actor": "bank"}
    )
    assert not restarts, f"{restarts} bank actor restarts"
    return report
