"""Sign-in limits (contract §4): failed attempts only, per email and per client IP, the client
IP taken from ``X-Forwarded-For`` only when the peer is one of ``LOCKERD_TRUSTED_PROXIES``."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from lockerd.http.proxies import TrustedProxies, behind_trusted_proxies
from lockerd.users.limits import FailureLimit, SignInLimits, TooManyAttempts, client_key
from tests.support.mosquitto import MosquittoBroker
from tests.support.users import PASSWORD, App, User, running_app


async def login(
    app: App, email: str, password: str, forwarded_for: str | None = None
) -> httpx.Response:
    headers = {} if forwarded_for is None else {"X-Forwarded-For": forwarded_for}
    return await app.http.post(
        "/api/login", json={"email": email, "password": password}, headers=headers
    )


def assert_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    error = response.json()
    assert error["error"] == "too_many_requests"
    assert 1 <= error["retry_after"] <= 60
    assert "try again" in error["message"]


async def test_many_users_behind_one_proxy_address_all_sign_in(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """Successes are never counted: 45 people from one address sign in, twice each, even
    with failures from that address in between (below the limit)."""
    async with running_app(
        mosquitto.url, tmp_path / "lockerd.db", LOCKERD_TRUSTED_PROXIES="127.0.0.1"
    ) as app:
        users = [await app.create_user() for _ in range(45)]
        for n in range(29):
            typo = await login(app, f"typo{n}@example.org", "nope", "203.0.113.9")
            assert typo.status_code == 401
        for _ in range(2):
            for user in users:
                response = await login(app, user.email, PASSWORD, "203.0.113.9")
                assert response.status_code == 200, response.text
        # and at once (password checks queue two at a time): still nobody refused
        results: list[int] = []

        async def sign_in(user: User) -> None:
            results.append((await login(app, user.email, PASSWORD, "203.0.113.9")).status_code)

        async with trio.open_nursery() as nursery:
            for user in users:
                nursery.start_soon(sign_in, user)
        assert results == [200] * len(users)


async def test_an_ip_with_30_failures_is_stopped_and_spoofed_forwarded_for_is_ignored(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """The peer (127.0.0.1) is not a trusted proxy: its X-Forwarded-For changes nothing."""
    async with running_app(
        mosquitto.url, tmp_path / "lockerd.db", LOCKERD_TRUSTED_PROXIES="10.0.0.0/8"
    ) as app:
        user = await app.create_user()
        for n in range(30):
            # a different spoofed client and a different account every time
            response = await login(app, f"guess{n}@example.org", "guess", f"198.51.100.{n}")
            assert response.status_code == 401, response.text
        # this address is done for, whatever it claims to forward for, and whichever account
        assert_limited(await login(app, user.email, PASSWORD, "192.0.2.1"))
        assert_limited(await login(app, user.email, PASSWORD))
        # logged with the peer's address, not the spoofed one
        assert app.context.sessions.limits.ip.failures.count("127.0.0.1") == 30


async def test_behind_a_trusted_proxy_each_client_is_counted_on_its_own(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    async with running_app(
        mosquitto.url, tmp_path / "lockerd.db", LOCKERD_TRUSTED_PROXIES="127.0.0.0/8"
    ) as app:
        user = await app.create_user()
        attacker = "198.51.100.7"
        for n in range(30):
            # what the client wrote itself (the left part) is not believed
            forwarded = f"10.9.9.{n}, {attacker}"
            response = await login(app, f"guess{n}@example.org", "guess", forwarded)
            assert response.status_code == 401, response.text
        assert_limited(await login(app, user.email, PASSWORD, attacker))
        # another client behind the same proxy is not affected, nor is the proxy itself
        assert (await login(app, user.email, PASSWORD, "198.51.100.8")).status_code == 200
        assert (await login(app, user.email, PASSWORD)).status_code == 200
        limits = app.context.sessions.limits
        assert limits.ip.failures.count(attacker) == 30
        assert limits.ip.failures.count("127.0.0.1") == 0


async def test_brute_force_on_one_account_stops_at_10_while_others_sign_in(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """An attacker with many addresses (behind our proxy) guesses one account's password."""
    async with running_app(
        mosquitto.url, tmp_path / "lockerd.db", LOCKERD_TRUSTED_PROXIES="127.0.0.1"
    ) as app:
        victim = await app.create_user()
        other = await app.create_user()
        for n in range(10):
            response = await login(app, victim.email, f"guess {n}", f"198.51.100.{n}")
            assert response.status_code == 401, response.text
        # even the right password from a fresh address: the account is locked for a while
        assert_limited(await login(app, victim.email, PASSWORD, "192.0.2.200"))
        assert_limited(await login(app, victim.email.upper(), "guess", "192.0.2.201"))
        # every other account signs in, from any of those addresses
        for n in range(10):
            response = await login(app, other.email, PASSWORD, f"198.51.100.{n}")
            assert response.status_code == 200, response.text


async def test_concurrent_guesses_cannot_slip_past_the_limit(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    """Attempts still being checked count: 25 guesses at once get at most 10 answers."""
    async with running_app(mosquitto.url, tmp_path / "lockerd.db") as app:
        victim = await app.create_user()
        statuses: list[int] = []

        async def guess(n: int) -> None:
            statuses.append((await login(app, victim.email, f"guess {n}")).status_code)

        async with trio.open_nursery() as nursery:
            for n in range(25):
                nursery.start_soon(guess, n)
        assert sorted(statuses) == [401] * 10 + [429] * 15
        # the account is now locked for a while, right password or not
        assert (await login(app, victim.email, PASSWORD)).status_code == 429


async def test_limits_are_per_email_case_insensitive_and_reset_by_nothing_but_time() -> None:
    now = [0.0]
    limits = SignInLimits(per_email=2, per_ip=3, window=60.0, clock=lambda: now[0])
    for _ in range(2):
        with pytest.raises(ValueError):
            async with limits.attempt("a@example.org", "192.0.2.1") as attempt:
                attempt.failed()
                raise ValueError
    with pytest.raises(TooManyAttempts) as refused:
        async with limits.attempt("a@example.org", "192.0.2.2"):
            pass
    assert refused.value.retry_after == 60
    # successes are not counted, and a third failure from the IP stops only that IP
    for _ in range(5):
        async with limits.attempt("b@example.org", "192.0.2.1"):
            pass
    async with limits.attempt("c@example.org", "192.0.2.1") as attempt:
        attempt.failed()
    with pytest.raises(TooManyAttempts):
        async with limits.attempt("d@example.org", "192.0.2.1"):
            pass
    now[0] = 61.0
    async with limits.attempt("a@example.org", "192.0.2.1"):
        pass


async def test_an_attempt_in_progress_holds_its_place_until_it_ends() -> None:
    limit = FailureLimit(1, 60.0)
    await limit.enter("k")
    entered = trio.Event()

    async def second() -> None:
        await limit.enter("k")
        entered.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert not entered.is_set()  # waits: the first might still fail
        limit.leave("k", failed=False)  # it succeeded: its place is free
        await entered.wait()
    limit.leave("k", failed=True)
    with pytest.raises(TooManyAttempts):
        await limit.enter("k")


def test_client_keys() -> None:
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert client_key(None) == "unknown"
    assert client_key("not an address") == "not an address"


# --- the ASGI wrapper around Hypercorn's ProxyFixMiddleware ---------------------------------


async def client_seen(
    networks: str, peer: str, forwarded_for: list[str], kind: str = "http"
) -> tuple[str, Any]:
    """(the client address the app sees, the scheme) for one request."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["client"] = scope["client"][0]
        seen["scheme"] = scope.get("scheme")

    trusted = [ipaddress.ip_network(n.strip()) for n in networks.split(",") if n.strip()]
    wrapped = behind_trusted_proxies(app, trusted)
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded_for]
    scope = {"type": kind, "client": (peer, 5555), "headers": headers, "scheme": "http"}
    await wrapped(scope, None, None)
    return seen["client"], seen["scheme"]


@pytest.mark.parametrize(
    ("networks", "peer", "forwarded_for", "client"),
    [
        # nothing trusted: the peer, whatever the header says
        ("", "192.0.2.1", ["198.51.100.1"], "192.0.2.1"),
        ("10.0.0.0/8", "192.0.2.1", ["198.51.100.1"], "192.0.2.1"),
        # a trusted proxy: the entry it appended (the rightmost), never the client's own
        ("10.0.0.0/8", "10.0.0.5", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.0/8", "10.0.0.5", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),
        ("10.0.0.0/8", "10.0.0.5", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),
        # a chain of our own proxies: the first address from the right that is not ours
        ("10.0.0.0/8", "10.0.0.5", ["6.6.6.6, 198.51.100.1, 10.0.0.9"], "198.51.100.1"),
        ("10.0.0.0/8", "10.0.0.5", ["10.0.0.8, 10.0.0.9"], "10.0.0.8"),
        # a trusted proxy that sent no header, or garbage: the peer
        ("10.0.0.0/8", "10.0.0.5", [], "10.0.0.5"),
        ("10.0.0.0/8", "10.0.0.5", ["unknown"], "10.0.0.5"),
        # IPv6 and IPv4-mapped peers
        ("2001:db8::/32", "2001:db8::1", ["2001:db8:ffff::2, 2a00::1"], "2a00::1"),
        ("127.0.0.1", "::ffff:127.0.0.1", ["198.51.100.3"], "198.51.100.3"),
    ],
)
async def test_trusted_proxies_decide_whose_forwarded_for_counts(
    networks: str, peer: str, forwarded_for: list[str], client: str
) -> None:
    assert (await client_seen(networks, peer, forwarded_for))[0] == client
    assert (await client_seen(networks, peer, forwarded_for, "websocket"))[0] == client


def test_trusted_proxies_hops() -> None:
    trusted = TrustedProxies([ipaddress.ip_network("10.0.0.0/8")])
    assert trusted.hops(["1.1.1.1"]) == 1
    assert trusted.hops(["1.1.1.1", "10.0.0.1"]) == 2
    assert trusted.hops(["10.0.0.2", "1.1.1.1", "10.0.0.1"]) == 2
    assert not TrustedProxies([])
    assert not trusted.trusts(None)
