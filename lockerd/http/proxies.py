"""The client address behind trusted reverse proxies (``LOCKERD_TRUSTED_PROXIES``, contract §1).

Hypercorn's :class:`~hypercorn.middleware.ProxyFixMiddleware` rewrites the ASGI scope's client
(and scheme and host) from ``X-Forwarded-For`` / ``-Proto`` / ``-Host``, trusting a fixed
number of hops. On its own it would believe anyone who sends the header; lockerd must believe
it only from its own proxies. :func:`behind_trusted_proxies` is the small wrapper that decides
per connection:

* the TCP peer is not in ``LOCKERD_TRUSTED_PROXIES`` (or none are configured): the scope is
  passed on untouched; a ``X-Forwarded-For`` sent by that peer is ignored;
* the peer is a trusted proxy: the hops to trust are counted from the right end of
  ``X-Forwarded-For``: the entry appended by the peer itself, plus one more for every entry
  that is itself a trusted proxy (a chain of our own proxies). ProxyFixMiddleware with that
  many hops then names the first address that is not one of ours: the client. Entries further
  left were written by the client and are never believed.

Everything that reads the client address (``request.remote_addr`` in Quart: the sign-in
limits, logs) then sees the client rather than the proxy. Websocket handshakes are treated
the same way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from hypercorn.middleware import ProxyFixMiddleware

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def _parse(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class TrustedProxies:
    """A set of networks and the question "is this address one of them"."""

    def __init__(self, networks: Iterable[IpNetwork]) -> None:
        self.networks: tuple[IpNetwork, ...] = tuple(networks)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str | None) -> bool:
        if not address or not self.networks:
            return False
        ip = _parse(address)
        return ip is not None and any(ip in network for network in self.networks)

    def hops(self, forwarded_for: Sequence[str]) -> int:
        """How many ``X-Forwarded-For`` entries, from the right, a trusted peer vouches for.

        At least 1 (the entry the peer appended); one more for each further entry that is a
        trusted proxy, stopping at the first that is not (or at the leftmost entry).
        """
        hops = 1
        for entry in reversed(forwarded_for[1:]):
            if not self.trusts(entry):
                break
            hops += 1
        return hops


def forwarded_for_entries(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every ``X-Forwarded-For`` entry in order (several headers are one list, RFC 9110)."""
    entries: list[str] = []
    for name, value in headers:
        if name.lower() == b"x-forwarded-for":
            entries.extend(part.strip() for part in value.decode("latin1").split(","))
    return [entry for entry in entries if entry]


def behind_trusted_proxies(app: ASGIApp, networks: Iterable[IpNetwork]) -> ASGIApp:
    """Wrap ``app`` so that requests from a trusted proxy carry the client's address.

    With no networks configured ``app`` is returned as it is (nothing to trust, no cost).
    A proxy-reported client that is not an IP address leaves the scope as it is (the peer's
    address is used), so garbage in the header can never name a key of its own.
    """
    trusted = TrustedProxies(networks)
    if not trusted:
        return app
    by_hops: dict[int, ProxyFixMiddleware] = {}

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            client = scope.get("client")
            if client and trusted.trusts(client[0]):
                entries = forwarded_for_entries(scope.get("headers", ()))
                if entries:
                    hops = min(trusted.hops(entries), len(entries))
                    if _parse(entries[-hops]) is not None:
                        fixer = by_hops.get(hops)
                        if fixer is None:
                            fixer = by_hops[hops] = ProxyFixMiddleware(
                                app, mode="legacy", trusted_hops=hops
                            )
                        await fixer(scope, receive, send)
                        return
        await app(scope, receive, send)

    return wrapped
