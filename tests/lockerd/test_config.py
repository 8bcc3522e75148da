"""Configuration parsing: the variables added with the contract's later sections."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from lockerd.config import ConfigError, load_settings


def test_defaults_of_the_later_variables() -> None:
    loaded = load_settings({}, {})
    assert loaded.trusted_proxies == ()
    assert loaded.alert_webhook_url is None
    assert loaded.node_id == (socket.gethostname() or "lockerd")
    assert loaded.broker_auth_cache_seconds == 0


def test_trusted_proxies_are_addresses_and_networks() -> None:
    loaded = load_settings({"LOCKERD_TRUSTED_PROXIES": "10.0.0.1, 172.16.0.0/12,::1"}, {})
    assert loaded.trusted_proxies == (
        ipaddress.ip_network("10.0.0.1/32"),
        ipaddress.ip_network("172.16.0.0/12"),
        ipaddress.ip_network("::1/128"),
    )


def test_flags_override_the_environment() -> None:
    loaded = load_settings({"LOCKERD_NODE_ID": "from-env"}, {"LOCKERD_NODE_ID": "from-flag"})
    assert loaded.node_id == "from-flag"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LOCKERD_TRUSTED_PROXIES", "10.0.0.1,proxy.example"),
        ("LOCKERD_ALERT_WEBHOOK_URL", "ftp://example.org/hook"),
        ("LOCKERD_ALERT_WEBHOOK_URL", "not a url"),
        ("LOCKERD_NODE_ID", "two words"),
        ("LOCKERD_NODE_ID", "x" * 65),
        ("LOCKERD_BROKER_AUTH_CACHE_SECONDS", "-1"),
        ("LOCKERD_BROKER_AUTH_CACHE_SECONDS", "1.5"),
    ],
)
def test_bad_values_name_their_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: value}, {})
    assert caught.value.variable == variable


def test_webhook_and_cache_values() -> None:
    loaded = load_settings(
        {
            "LOCKERD_ALERT_WEBHOOK_URL": "https://ops.example.org/hooks/lockerd",
            "LOCKERD_BROKER_AUTH_CACHE_SECONDS": "30",
        },
        {},
    )
    assert loaded.alert_webhook_url == "https://ops.example.org/hooks/lockerd"
    assert loaded.broker_auth_cache_seconds == 30
