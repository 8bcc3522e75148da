"""Keyed hashing (domain/keys.py): stored hashes depend on the exact construction."""

from __future__ import annotations

import hashlib
import hmac

from domain.keys import Keyring


def reference(master: bytes, purpose: str, value: str) -> str:
    """HMAC-SHA256 under the purpose's subkey, HMAC-SHA256(master, purpose): what every hash
    already stored (tokens, sessions, device and agent passwords) was made with."""
    subkey = hmac.new(master, purpose.encode(), hashlib.sha256).digest()
    return hmac.new(subkey, value.encode(), hashlib.sha256).hexdigest()


def test_hash_is_the_documented_construction_for_every_purpose_and_repeated_calls() -> None:
    keyring = Keyring(b"m" * 32)
    for purpose in ("session", "provisioning-token", "device-password", "session"):
        for value in ("", "token-1", "ü-token"):
            assert keyring.hash(purpose, value) == reference(b"m" * 32, purpose, value)
            assert keyring.verify(purpose, value, reference(b"m" * 32, purpose, value))
    assert not keyring.verify("session", "token-1", reference(b"m" * 32, "other", "token-1"))


def test_sign_uses_the_purposes_subkey() -> None:
    keyring = Keyring(b"k")
    subkey = hmac.new(b"k", b"qr", hashlib.sha256).digest()
    assert keyring.sign("qr", b"payload") == hmac.new(subkey, b"payload", hashlib.sha256).digest()
    assert keyring.sign("qr", b"payload") != Keyring(b"other").sign("qr", b"payload")
