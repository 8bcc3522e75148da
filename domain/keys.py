"""Secrets: random tokens, keyed hashes, constant-time comparisons (no I/O).

Machine secrets (provisioning tokens, device and agent passwords, bearer tokens) are 256-bit
random values, so a keyed HMAC-SHA256 is as strong as a slow KDF for them and costs 2 µs instead
of 16-100 ms (research/deps.md §4): go-auth checks a device password on every CONNECT.
Human passwords get argon2id.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token(nbytes: int = 32) -> str:
    """A URL- and topic-safe random token that never starts with ``-`` (it would read as an
    option on a command line, e.g. ``lockerd provision-test --token``)."""
    while True:
        token = secrets.token_urlsafe(nbytes)
        if not token.startswith("-"):
            return token


class Keyring:
    """Keyed hashing under the server's secret key, with a separate subkey per purpose."""

    def __init__(self, master: bytes) -> None:
        self._master = master
        # purposes are a handful of constants of the code; every session check hashes under
        # one, so its subkey is derived once, not per request
        self._subkeys: dict[str, bytes] = {}

    def _subkey(self, purpose: str) -> bytes:
        subkey = self._subkeys.get(purpose)
        if subkey is None:
            subkey = self._subkeys[purpose] = hmac.digest(
                self._master, purpose.encode(), hashlib.sha256
            )
        return subkey

    def hash(self, purpose: str, value: str) -> str:
        return hmac.digest(self._subkey(purpose), value.encode(), hashlib.sha256).hex()

    def verify(self, purpose: str, value: str, expected_hash: str) -> bool:
        return hmac.compare_digest(self.hash(purpose, value), expected_hash)

    def sign(self, purpose: str, message: bytes) -> bytes:
        return hmac.digest(self._subkey(purpose), message, hashlib.sha256)


def constant_time_equals(given: str | None, expected: str | None) -> bool:
    if given is None or expected is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())
