"""Configuration from environment variables, each overridable by a CLI flag.

Bad configuration stops start-up with one clear line naming the variable (contract §1).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from store.url import parse_database_url


class ConfigError(Exception):
    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True, slots=True)
class MqttUrl:
    host: str
    port: int
    username: str | None
    password: str | None


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Settings:
    http_host: str
    http_port: int
    mqtt: MqttUrl
    database: str
    mosq_secret: str | None
    admin_token: str | None
    provisioning_user: str
    provisioning_password: str | None
    command_timeout: int
    provisioning_token_ttl: int
    accept_status_topic: bool
    secret_key: str | None
    mqtt_client_id: str
    trusted_proxies: tuple[IpNetwork, ...] = ()
    alert_webhook_url: str | None = None
    node_id: str = "lockerd"
    broker_auth_cache_seconds: int = 0


# variable -> (CLI flag, default)
VARIABLES: dict[str, tuple[str, str | None]] = {
    "LOCKERD_HTTP": ("--http", "127.0.0.1:8080"),
    "LOCKERD_MQTT_URL": ("--mqtt-url", "mqtt://127.0.0.1:1883"),
    "LOCKERD_DATABASE": ("--database", "sqlite:///lockerd.db"),
    "LOCKERD_MOSQ_SECRET": ("--mosq-secret", None),
    "LOCKERD_ADMIN_TOKEN": ("--admin-token", None),
    "LOCKERD_PROVISIONING_USER": ("--provisioning-user", "provisioning_client"),
    "LOCKERD_PROVISIONING_PASSWORD": ("--provisioning-password", None),
    "LOCKERD_COMMAND_TIMEOUT": ("--command-timeout", "30"),
    "LOCKERD_PROVISIONING_TOKEN_TTL": ("--provisioning-token-ttl", "604800"),
    "LOCKERD_ACCEPT_STATUS_TOPIC": ("--accept-status-topic", "true"),
    "LOCKERD_SECRET_KEY": ("--secret-key", None),
    "LOCKERD_MQTT_CLIENT_ID": ("--mqtt-client-id", "lockerd-backend"),
    "LOCKERD_TRUSTED_PROXIES": ("--trusted-proxies", None),
    "LOCKERD_ALERT_WEBHOOK_URL": ("--alert-webhook-url", None),
    "LOCKERD_NODE_ID": ("--node-id", None),
    "LOCKERD_BROKER_AUTH_CACHE_SECONDS": ("--broker-auth-cache-seconds", "0"),
}


def parse_bool(variable: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ConfigError(variable, f"expected true/false/1/0, got {text!r}")


def parse_duration(variable: str, text: str) -> int:
    stripped = text.strip()
    if not stripped.isdigit() or int(stripped) <= 0:
        raise ConfigError(variable, f"expected a positive whole number of seconds, got {text!r}")
    return int(stripped)


def parse_seconds_or_zero(variable: str, text: str) -> int:
    stripped = text.strip()
    if not stripped.isdigit():
        raise ConfigError(variable, f"expected a whole number of seconds (0 or more), got {text!r}")
    return int(stripped)


def parse_networks(variable: str, text: str | None) -> tuple[IpNetwork, ...]:
    """Comma-separated IP addresses or CIDR networks; empty or unset: none."""
    if not text:
        return ()
    networks = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(variable, f"{item!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def parse_http_url(variable: str, text: str | None) -> str | None:
    if not text:
        return None
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(variable, f"expected an http:// or https:// URL, got {text!r}")
    return text.strip()


def parse_node_id(variable: str, text: str | None) -> str:
    """A node's name: printable, no spaces, at most 64 characters; default the hostname."""
    value = (text or socket.gethostname() or "lockerd").strip()
    if not value or len(value) > 64 or not value.isprintable() or " " in value:
        raise ConfigError(variable, f"expected a name of 1-64 printable characters, got {value!r}")
    return value


def parse_host_port(variable: str, text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    # port 0 asks the OS for any free port (useful for tests)
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(variable, f"expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


def parse_mqtt_url(variable: str, text: str) -> MqttUrl:
    parts = urlsplit(text.strip())
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ConfigError(variable, f"expected mqtt://[user:password@]host:port, got {text!r}")
    try:
        port = parts.port or 1883
    except ValueError:
        raise ConfigError(variable, f"invalid port in {text!r}") from None
    if parts.path not in ("", "/"):
        raise ConfigError(variable, "the MQTT URL takes no path")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    return MqttUrl(parts.hostname, port, username, password)


def load_settings(env: Mapping[str, str], overrides: Mapping[str, str | None]) -> Settings:
    """``overrides`` maps variable names to CLI values (None: not given)."""

    def get(variable: str) -> str | None:
        override = overrides.get(variable)
        if override is not None:
            return override
        value = env.get(variable)
        if value is not None and value != "":
            return value
        return VARIABLES[variable][1]

    def required(variable: str) -> str:
        value = get(variable)
        assert value is not None, variable
        return value

    http_host, http_port = parse_host_port("LOCKERD_HTTP", required("LOCKERD_HTTP"))
    database = required("LOCKERD_DATABASE")
    try:
        parse_database_url(database)
    except ValueError as exc:
        raise ConfigError("LOCKERD_DATABASE", str(exc)) from None
    return Settings(
        http_host=http_host,
        http_port=http_port,
        mqtt=parse_mqtt_url("LOCKERD_MQTT_URL", required("LOCKERD_MQTT_URL")),
        database=database,
        mosq_secret=get("LOCKERD_MOSQ_SECRET"),
        admin_token=get("LOCKERD_ADMIN_TOKEN"),
        provisioning_user=required("LOCKERD_PROVISIONING_USER"),
        provisioning_password=get("LOCKERD_PROVISIONING_PASSWORD"),
        command_timeout=parse_duration(
            "LOCKERD_COMMAND_TIMEOUT", required("LOCKERD_COMMAND_TIMEOUT")
        ),
        provisioning_token_ttl=parse_duration(
            "LOCKERD_PROVISIONING_TOKEN_TTL", required("LOCKERD_PROVISIONING_TOKEN_TTL")
        ),
        accept_status_topic=parse_bool(
            "LOCKERD_ACCEPT_STATUS_TOPIC", required("LOCKERD_ACCEPT_STATUS_TOPIC")
        ),
        secret_key=get("LOCKERD_SECRET_KEY"),
        mqtt_client_id=required("LOCKERD_MQTT_CLIENT_ID"),
        trusted_proxies=parse_networks("LOCKERD_TRUSTED_PROXIES", get("LOCKERD_TRUSTED_PROXIES")),
        alert_webhook_url=parse_http_url(
            "LOCKERD_ALERT_WEBHOOK_URL", get("LOCKERD_ALERT_WEBHOOK_URL")
        ),
        node_id=parse_node_id("LOCKERD_NODE_ID", get("LOCKERD_NODE_ID")),
        broker_auth_cache_seconds=parse_seconds_or_zero(
            "LOCKERD_BROKER_AUTH_CACHE_SECONDS", required("LOCKERD_BROKER_AUTH_CACHE_SECONDS")
        ),
    )
