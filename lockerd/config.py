"""Configuration from environment variables, each overridable by a CLI flag.

Bad configuration stops start-up with one clear line naming the variable (contract §1).
"""

from __future__ import annotations

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
    )
