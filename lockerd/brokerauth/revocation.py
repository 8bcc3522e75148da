"""How long revoked device credentials may outlive their revocation in go-auth's cache.

go-auth (``auth_opt_cache true``) caches every answer lockerd gives for
``auth_cache_seconds``/``acl_cache_seconds`` (both ``LOCKERD_BROKER_AUTH_CACHE_SECONDS`` in our
deployment) plus or minus a random jitter of up to ``auth_jitter_seconds``/
``acl_jitter_seconds`` (cache/cache.go ``expirationWithJitter``: the TTL lies in
``[ttl - jitter, ttl + jitter)``). An allow that lockerd gave for the old credentials just
before a re-provisioning can therefore still be served for ``ttl + jitter`` after it. The
*revocation window* waits that out, plus a margin for what happens between lockerd's decision
and the broker caching it (the append that makes the revocation durable, the HTTP round trip,
timer granularity): see docs/broker-auth.md.

The deployment derives the jitter from the cache time with the same rule
(``docker/mosquitto/entrypoint.sh``; ``tests/test_compose.py`` checks that they agree).
"""

from __future__ import annotations

from typing import Final

#: go-auth's jitter in our deployment: a tenth of the cache time, whole seconds, rounded down.
JITTER_DIVISOR: Final = 10
#: Seconds added to the longest cache lifetime. The window starts when the bank actor decides
#: the revocation; the directory stops allowing the old credentials once the revocation is
#: stored, and the broker caches an answer a round trip after lockerd gave it: the margin
#: covers both (an append that takes longer than this would eat into it).
REVOCATION_MARGIN_SECONDS: Final = 2


def cache_jitter_seconds(cache_seconds: int) -> int:
    """The ``auth_opt_*_jitter_seconds`` the deployment sets for ``cache_seconds``."""
    if cache_seconds <= 0:
        return 0
    return cache_seconds // JITTER_DIVISOR


def revocation_window_seconds(cache_seconds: int) -> int:
    """Seconds after a revocation during which the broker may still honour the revoked
    credentials from its cache; 0 when it caches nothing (then revocation is exact)."""
    if cache_seconds <= 0:
        return 0
    return cache_seconds + cache_jitter_seconds(cache_seconds) + REVOCATION_MARGIN_SECONDS
