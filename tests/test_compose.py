"""The deployment files: docker-compose.yml, docker/ (Dockerfile, Mosquitto/go-auth, .env.example).

No container engine is needed. When the docker CLI has the compose plugin, ``docker compose
config`` validates the file as well (it needs no engine); the structural checks below run either
way, on the YAML as written (PyYAML), with the variables of docker/.env.example interpolated the
way compose does. The go-auth URIs in the Mosquitto template are checked against the URL map of a
running lockerd, and answered by it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from lockerd.brokerauth.revocation import (
    REVOCATION_MARGIN_SECONDS,
    cache_jitter_seconds,
    revocation_window_seconds,
)
from lockerd.config import load_settings
from lockerd.http.app import create_app
from lockerd.service import BLUEPRINTS
from store.url import parse_database_url
from tests.support.mosquitto import MosquittoBroker
from tests.support.service import MOSQ_SECRET, lockerd, test_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKER = ROOT / "docker"
ENV_EXAMPLE = DOCKER / ".env.example"
TEMPLATE = DOCKER / "mosquitto" / "mosquitto.conf.template"
ENTRYPOINT = DOCKER / "mosquitto" / "entrypoint.sh"
DOCKERFILE = DOCKER / "Dockerfile"
HAPROXY = DOCKER / "haproxy" / "haproxy.cfg"
NODES = ("lockerd-1", "lockerd-2")

GOAUTH_URI_OPTIONS = (
    "auth_opt_http_getuser_uri",
    "auth_opt_http_aclcheck_uri",
)
# what the template may contain besides the secret: filled in by the entrypoint
TEMPLATE_VARIABLES = {
    "LOCKERD_MOSQ_SECRET",
    "GOAUTH_CACHE",
    "LOCKERD_BROKER_AUTH_CACHE_SECONDS",
    "GOAUTH_JITTER_SECONDS",
    "GOAUTH_FILES_DIR",
}


# --------------------------------------------------------------------------- helpers


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        values[key.strip()] = value.strip()
    return values


_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


class MissingVariable(Exception):
    pass


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        unset_or_empty = value is None or (op is not None and op.startswith(":") and not value)
        if op in ("-", ":-") and unset_or_empty:
            return arg
        if op in ("?", ":?") and unset_or_empty:
            raise MissingVariable(f"{name}: {arg}")
        return value or ""

    return _VARIABLE.sub(replace, text)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    return node


def variables_used(text: str) -> set[str]:
    return {
        m.group("name") or m.group("bare") for m in _VARIABLE.finditer(text) if m.group(0) != "$$"
    }


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(raw, dict)
    result: dict[str, Any] = interpolate_tree(
        raw, read_env_file(ENV_EXAMPLE) if env is None else env
    )
    return result


def env_list(environment: Any) -> dict[str, str]:
    if isinstance(environment, dict):
        return {key: str(value) for key, value in environment.items()}
    return dict(item.split("=", 1) for item in environment or [])


def template_options() -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for line in TEMPLATE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, _, value = stripped.partition(" ")
        options.setdefault(key, []).append(value.strip())
    return options


def docker_compose_available() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        done = subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


# --------------------------------------------------------------------------- compose file


def test_compose_file_is_valid(tmp_path: Path) -> None:
    """``docker compose config`` when the plugin is there; the YAML checks below always."""
    compose = load_compose()
    assert set(compose["services"]) == {"mosquitto", *NODES, "proxy", "postgres"}
    if docker_compose_available():
        project = tmp_path / "project"
        project.mkdir()
        shutil.copy(COMPOSE, project / "docker-compose.yml")
        shutil.copytree(DOCKER, project / "docker")
        shutil.copy(ENV_EXAMPLE, project / ".env")
        done = subprocess.run(
            ["docker", "compose", "config", "--quiet"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        (project / ".env").unlink()
        done = subprocess.run(
            ["docker", "compose", "config", "--quiet"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={
                k: v for k, v in os.environ.items() if not k.startswith(("LOCKERD_", "POSTGRES_"))
            },
        )
        assert done.returncode != 0  # secrets are required, never defaulted


def test_services_images_health_and_order() -> None:
    services = load_compose()["services"]
    mosquitto, postgres, proxy = services["mosquitto"], services["postgres"], services["proxy"]

    assert mosquitto["image"].startswith("iegomez/mosquitto-go-auth")
    assert postgres["image"].startswith("postgres:")
    assert proxy["image"].startswith("haproxy:")
    for name in NODES:
        node = services[name]
        assert node["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}
        assert (ROOT / node["build"]["context"] / node["build"]["dockerfile"]).is_file()
        health = " ".join(node["healthcheck"]["test"])
        assert "/healthz" in health and "8080" in health
        assert node["depends_on"]["postgres"]["condition"] == "service_healthy"
        # the broker is healthy without lockerd (go-auth's files backend knows lockerd's user)
        assert node["depends_on"]["mosquitto"]["condition"] == "service_healthy"
        assert "ports" not in node  # reached through the proxy only
        assert node["stop_grace_period"] == "20s"

    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"
        assert service.get("restart") == "unless-stopped", name
    broker_health = " ".join(mosquitto["healthcheck"]["test"])
    assert "mosquitto_sub" in broker_health and "$LOCKERD_BACKEND_MQTT_PASSWORD" in broker_health
    assert read_env_file(ENV_EXAMPLE)["LOCKERD_BACKEND_MQTT_PASSWORD"] not in broker_health

    # PostgreSQL keeps its data in a named volume; the broker keeps lockerd's sessions.
    volumes = load_compose()["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]
    assert "postgres-data" in volumes and "mosquitto-data" in volumes
    assert "mosquitto-data:/var/lib/mosquitto" in mosquitto["volumes"]
    # Only MQTT is published to the world; HTTP (the proxy) to the host's loopback, no DB.
    assert mosquitto["ports"] == ["1883:1883"]
    assert proxy["ports"] == ["127.0.0.1:8080:8080"]
    assert "ports" not in postgres


def haproxy_lines() -> list[str]:
    return [
        line.strip()
        for line in HAPROXY.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def test_two_nodes_behind_the_proxy_each_with_its_own_name() -> None:
    """Contract §7: two nodes, one database and broker, one HTTP entry in front of them."""
    services = load_compose()["services"]
    proxy = services["proxy"]
    assert "./docker/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in proxy["volumes"]
    assert sorted(proxy["depends_on"]) == sorted(NODES)
    # go-auth asks "lockerd:8080" (the Mosquitto template): that name is the proxy, so the
    # broker's checks go to whichever node is up
    network = proxy["networks"]["backend"]
    assert "lockerd" in network["aliases"]
    assert template_options()["auth_opt_http_host"] == ["lockerd"]
    # every node: the same settings but its name; its host name is how the other reaches it
    example = read_env_file(ENV_EXAMPLE)
    settings = [
        load_settings({**example, **env_list(services[name]["environment"])}, {}) for name in NODES
    ]
    assert [s.node_id for s in settings] == list(NODES)
    assert [services[name]["hostname"] for name in NODES] == list(NODES)
    assert len({s.database for s in settings}) == 1
    assert len({(s.mqtt.host, s.mqtt.port, s.mqtt.username) for s in settings}) == 1
    # X-Forwarded-For is believed from the proxy's fixed address only
    subnet = load_compose()["networks"]["backend"]["ipam"]["config"][0]["subnet"]
    import ipaddress

    address = ipaddress.ip_address(network["ipv4_address"])
    assert address in ipaddress.ip_network(subnet)
    for one in settings:
        assert [str(n) for n in one.trusted_proxies] == [f"{address}/32"]


def test_the_proxy_balances_every_node_and_keeps_streams_open() -> None:
    lines = haproxy_lines()
    servers = [line.split() for line in lines if line.startswith("server ")]
    assert [(s[1], s[2]) for s in servers] == [(n, f"{n}:8080") for n in NODES]
    assert all("check" in s for s in servers)
    assert "bind :8080" in lines and "mode http" in lines
    # websockets (/ws/status, /ws/app) and SSE stay open past the request timeouts
    tunnel = [line for line in lines if line.startswith("timeout tunnel")]
    assert tunnel == ["timeout tunnel 1h"]
    assert not any(line.startswith("option http-buffer-request") for line in lines)
    # a node is in rotation while it answers: 503 (MQTT not up yet) still answers go-auth
    assert "option httpchk GET /healthz" in lines
    assert "http-check expect rstatus ^(200|503)$" in lines
    assert "option forwardfor" in lines and "option redispatch" in lines
    # the nodes' internal route is for the nodes only (they call each other directly)
    assert "http-request deny deny_status 404 if { path_beg /internal/ }" in lines


def test_bind_mounts_exist_and_the_entrypoint_is_the_generator() -> None:
    mosquitto = load_compose()["services"]["mosquitto"]
    binds = [v for v in mosquitto["volumes"] if v.startswith("./")]
    assert binds == ["./docker/mosquitto:/etc/mosquitto-lockerd:ro"]
    for bind in binds:
        assert (ROOT / bind.split(":")[0]).is_dir()
    entrypoint = mosquitto["entrypoint"]
    assert entrypoint[-1] == "/etc/mosquitto-lockerd/entrypoint.sh"
    assert (DOCKER / "mosquitto" / Path(entrypoint[-1]).name).is_file()


def test_secrets_come_from_env_file_and_are_required() -> None:
    text = COMPOSE.read_text()
    example = read_env_file(ENV_EXAMPLE)
    for name in variables_used(text):
        assert name in example, f"{name} is used by docker-compose.yml but not in .env.example"
    # The example's secrets are obvious placeholders, never something that could be real.
    for key, value in example.items():
        if key.endswith(("_PASSWORD", "_SECRET", "_TOKEN", "_KEY")):
            assert value.startswith("change-me"), key
    # No secret may be defaulted: without .env, interpolation fails naming the variable.
    for secret in ("POSTGRES_PASSWORD", "LOCKERD_MOSQ_SECRET", "LOCKERD_BACKEND_MQTT_PASSWORD"):
        env = {k: v for k, v in example.items() if k != secret}
        with pytest.raises(MissingVariable, match=secret):
            load_compose(env)
    for name in NODES:
        assert load_compose()["services"][name]["env_file"] == ".env"


@pytest.mark.parametrize("node", NODES)
def test_lockerd_gets_a_valid_configuration(node: str) -> None:
    """The environment compose gives each node passes lockerd's own configuration loader."""
    example = read_env_file(ENV_EXAMPLE)
    service = load_compose()["services"][node]
    env = {**example, **env_list(service["environment"])}
    settings = load_settings(env, {})
    database = parse_database_url(settings.database)
    assert database.kind == "postgresql"
    parts = urlsplit(settings.database)
    assert (parts.hostname, parts.port, parts.path) == ("postgres", 5432, "/lockerd")
    assert parts.password == example["POSTGRES_PASSWORD"]
    assert (settings.mqtt.host, settings.mqtt.port) == ("mosquitto", 1883)
    assert settings.mqtt.username == example["LOCKERD_BACKEND_MQTT_USER"]
    assert settings.mqtt.password == example["LOCKERD_BACKEND_MQTT_PASSWORD"]
    assert (settings.http_host, settings.http_port) == ("0.0.0.0", 8080)
    assert settings.mosq_secret == example["LOCKERD_MOSQ_SECRET"]
    mosquitto_env = env_list(load_compose()["services"]["mosquitto"]["environment"])
    assert mosquitto_env["LOCKERD_MOSQ_SECRET"] == settings.mosq_secret
    # the broker's files backend knows lockerd's own login, and caches as long as lockerd
    # believes (its revocation window)
    assert mosquitto_env["LOCKERD_BACKEND_MQTT_USER"] == settings.mqtt.username
    assert mosquitto_env["LOCKERD_BACKEND_MQTT_PASSWORD"] == settings.mqtt.password
    assert int(mosquitto_env["LOCKERD_BROKER_AUTH_CACHE_SECONDS"]) == (
        settings.broker_auth_cache_seconds
    )
    assert settings.broker_auth_cache_seconds > 0  # go-auth's cache is on in production
    postgres_env = env_list(load_compose()["services"]["postgres"]["environment"])
    assert postgres_env["POSTGRES_PASSWORD"] == parts.password
    assert (postgres_env["POSTGRES_USER"], postgres_env["POSTGRES_DB"]) == ("lockerd", "lockerd")


# --------------------------------------------------------------------------- Mosquitto


def test_mosquitto_template_configures_goauth_http_backend() -> None:
    options = template_options()

    def one(key: str) -> str:
        assert len(options.get(key, [])) == 1, f"{key}: {options.get(key)}"
        return options[key][0]

    assert one("allow_anonymous") == "false"
    assert one("per_listener_settings") == "false"
    assert one("auth_plugin") == "/mosquitto/go-auth.so"
    assert one("auth_opt_http_host") == "lockerd"
    assert one("auth_opt_http_port") == "8080"
    assert one("auth_opt_http_params_mode") == "json"
    assert one("auth_opt_http_response_mode") == "status"
    assert one("auth_opt_http_method") == "POST"
    assert one("persistence") == "true"
    assert options["listener"] == ["1883"]
    for key in GOAUTH_URI_OPTIONS:
        query = parse_qs(urlsplit(one(key)).query)
        assert query == {"mosq_secret": ["${LOCKERD_MOSQ_SECRET}"]}, key
    assert variables_used(TEMPLATE.read_text()) == TEMPLATE_VARIABLES


def test_the_backend_user_does_not_depend_on_lockerd() -> None:
    """Contract §6: go-auth's files backend answers for lockerd's own user before http."""
    options = template_options()
    backends = options["auth_opt_backends"][0].replace(" ", "").split(",")
    assert backends == ["files", "http"]  # files first: it answers without a request
    assert options["auth_opt_files_password_path"] == ["${GOAUTH_FILES_DIR}/passwords"]
    assert options["auth_opt_files_acl_path"] == ["${GOAUTH_FILES_DIR}/acls"]
    assert "auth_opt_check_prefix" not in options or options["auth_opt_check_prefix"] == ["false"]


def test_no_superuser_request_in_front_of_every_acl_check() -> None:
    """go-auth asks /superuser before every /acl unless no backend is registered for it."""
    options = template_options()
    for backend in ("files", "http"):
        checks = set(options[f"auth_opt_{backend}_register"][0].replace(" ", "").split(","))
        assert checks == {"user", "acl"}, backend
    assert "auth_opt_http_superuser_uri" not in options


def test_the_cache_is_on_with_lockerds_ttls_and_no_refresh() -> None:
    options = template_options()
    assert options["auth_opt_cache"] == ["${GOAUTH_CACHE}"]
    assert options["auth_opt_cache_type"] == ["go-cache"]
    for kind in ("auth", "acl"):
        assert options[f"auth_opt_{kind}_cache_seconds"] == ["${LOCKERD_BROKER_AUTH_CACHE_SECONDS}"]
        assert options[f"auth_opt_{kind}_jitter_seconds"] == ["${GOAUTH_JITTER_SECONDS}"]
    assert "auth_opt_cache_refresh" not in options  # a hit must not keep a revoked entry alive


def test_queues_hold_a_burst_to_lockerd() -> None:
    """Contract §6: Mosquitto's defaults (1,000 queued, 20 in flight per client) dropped a
    5,000-message burst to lockerd; lockerd acknowledges only after applying (manual ack)."""
    options = template_options()
    assert int(options["max_queued_messages"][0]) >= 100_000
    queued_bytes = int(options["max_queued_bytes"][0])
    assert queued_bytes == 0 or queued_bytes >= 100_000 * 1024  # 100,000 heartbeats fit
    assert int(options["max_inflight_messages"][0]) >= 1000


PW_STUB = """#!/bin/sh
# go-auth's pw tool stand-in: checks its arguments, prints a PBKDF2 hash of a fixed shape
[ "$1" = "-p" ] && [ -n "$2" ] || exit 64
echo "PBKDF2\\$sha512\\$100000\\$c2FsdA==\\$aGFzaA=="
"""


def run_entrypoint(
    tmp_path: Path,
    secret: str | None,
    *,
    password: str | None = "backend-pw_1",
    user: str | None = None,
    cache_seconds: str | None = None,
    pw: str = PW_STUB,
) -> subprocess.CompletedProcess[str]:
    stub = tmp_path / "pw"
    stub.write_text(pw)
    stub.chmod(0o755)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "MOSQUITTO_CONF_TEMPLATE": str(TEMPLATE),
        "MOSQUITTO_CONF": str(tmp_path / "etc" / "mosquitto.conf"),
        "GOAUTH_FILES_DIR": str(tmp_path / "etc" / "go-auth"),
        "GOAUTH_PW_BIN": str(stub),
        "MOSQUITTO_FILES_GROUP": "",
        "MOSQUITTO_BIN": "echo",  # stands in for mosquitto: shows how it would be started
    }
    for name, value in (
        ("LOCKERD_MOSQ_SECRET", secret),
        ("LOCKERD_BACKEND_MQTT_PASSWORD", password),
        ("LOCKERD_BACKEND_MQTT_USER", user),
        ("LOCKERD_BROKER_AUTH_CACHE_SECONDS", cache_seconds),
    ):
        if value is not None:
            env[name] = value
    return subprocess.run(
        ["sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def rendered_options(tmp_path: Path) -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for line in (tmp_path / "etc" / "mosquitto.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.strip().partition(" ")
            options.setdefault(key, []).append(value)
    return options


def test_entrypoint_writes_the_config_with_the_secret(tmp_path: Path) -> None:
    done = run_entrypoint(tmp_path, "s3cr3t-Value_1.~", cache_seconds="30")
    assert done.returncode == 0, done.stderr
    conf = tmp_path / "etc" / "mosquitto.conf"
    assert done.stdout.split() == ["-c", str(conf)]
    text = conf.read_text()
    assert "${" not in text
    assert text.count("?mosq_secret=s3cr3t-Value_1.~") == len(GOAUTH_URI_OPTIONS)
    files_dir = str(tmp_path / "etc" / "go-auth")
    expected = TEMPLATE.read_text()
    for name, value in (
        ("LOCKERD_MOSQ_SECRET", "s3cr3t-Value_1.~"),
        ("GOAUTH_CACHE", "true"),
        ("LOCKERD_BROKER_AUTH_CACHE_SECONDS", "30"),
        ("GOAUTH_JITTER_SECONDS", "3"),
        ("GOAUTH_FILES_DIR", files_dir),
    ):
        expected = expected.replace("${" + name + "}", value)
    assert text == expected
    # only the owner reads what holds the secret and the hash (the container passes the
    # mosquitto group in MOSQUITTO_FILES_GROUP: 0640)
    for path in (conf, tmp_path / "etc" / "go-auth" / "passwords"):
        assert oct(path.stat().st_mode & 0o777) == "0o600", path
    passwords = (tmp_path / "etc" / "go-auth" / "passwords").read_text()
    assert passwords == "lockerd-backend:PBKDF2$sha512$100000$c2FsdA==$aGFzaA==\n"
    acls = (tmp_path / "etc" / "go-auth" / "acls").read_text()
    assert acls == "user lockerd-backend\ntopic readwrite #\n"
    assert "backend-pw_1" not in text + passwords + acls + done.stdout + done.stderr


@pytest.mark.parametrize(
    ("cache", "enabled", "jitter"),
    [
        ("0", "false", "0"),
        ("1", "true", "0"),
        ("9", "true", "0"),
        ("10", "true", "1"),
        ("30", "true", "3"),
        ("299", "true", "29"),
    ],
)
def test_entrypoint_cache_and_jitter_agree_with_lockerds_revocation_window(
    tmp_path: Path, cache: str, enabled: str, jitter: str
) -> None:
    done = run_entrypoint(tmp_path, "s", cache_seconds=cache)
    assert done.returncode == 0, done.stderr
    options = rendered_options(tmp_path)
    assert options["auth_opt_cache"] == [enabled]
    assert options["auth_opt_acl_cache_seconds"] == [cache]
    assert options["auth_opt_auth_jitter_seconds"] == [jitter]
    assert options["auth_opt_acl_jitter_seconds"] == [jitter]
    # lockerd counts the same jitter into its revocation window (lockerd/brokerauth)
    assert cache_jitter_seconds(int(cache)) == int(jitter)
    window = revocation_window_seconds(int(cache))
    if int(cache):
        assert window == int(cache) + int(jitter) + REVOCATION_MARGIN_SECONDS
    else:
        assert window == 0


def test_entrypoint_defaults_to_a_30_second_cache(tmp_path: Path) -> None:
    done = run_entrypoint(tmp_path, "s")
    assert done.returncode == 0, done.stderr
    assert rendered_options(tmp_path)["auth_opt_acl_cache_seconds"] == ["30"]
    compose = load_compose()["services"]
    for node in NODES:
        assert (
            env_list(compose[node]["environment"])["LOCKERD_BROKER_AUTH_CACHE_SECONDS"]
            == read_env_file(ENV_EXAMPLE)["LOCKERD_BROKER_AUTH_CACHE_SECONDS"]
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"secret": None}, "LOCKERD_MOSQ_SECRET is not set"),
        ({"secret": ""}, "LOCKERD_MOSQ_SECRET is not set"),
        ({"secret": "a&b"}, "only contain"),
        ({"secret": "x|y"}, "only contain"),
        ({"password": None}, "LOCKERD_BACKEND_MQTT_PASSWORD is not set"),
        ({"password": "a:b"}, "LOCKERD_BACKEND_MQTT_PASSWORD may only contain"),
        ({"user": "a:b"}, "LOCKERD_BACKEND_MQTT_USER may only contain"),
        ({"user": "a b"}, "LOCKERD_BACKEND_MQTT_USER may only contain"),
        ({"cache_seconds": "-1"}, "LOCKERD_BROKER_AUTH_CACHE_SECONDS"),
        ({"cache_seconds": "ten"}, "LOCKERD_BROKER_AUTH_CACHE_SECONDS"),
        ({"cache_seconds": "030"}, "LOCKERD_BROKER_AUTH_CACHE_SECONDS"),
        ({"pw": "#!/bin/sh\nexit 1\n"}, "could not hash"),
        ({"pw": "#!/bin/sh\necho nope\n"}, "did not print a PBKDF2 hash"),
    ],
)
def test_entrypoint_refuses_missing_or_unsafe_settings(
    tmp_path: Path, change: dict[str, str | None], message: str
) -> None:
    arguments: dict[str, Any] = {"secret": "s3cret", **change}
    secret = arguments.pop("secret")
    done = run_entrypoint(tmp_path, secret, **arguments)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    assert not (tmp_path / "etc" / "mosquitto.conf").exists()
    for value in change.values():
        if value and len(value) > 3 and not value.startswith("#!"):
            assert value not in done.stderr  # errors name the variable, not its value


async def test_goauth_uris_name_routes_lockerd_serves(
    mosquitto: MosquittoBroker, tmp_path: Path
) -> None:
    options = template_options()
    settings = test_settings(mosquitto.url, tmp_path / "l.db")
    async with lockerd(settings) as svc:
        app = create_app(svc.context, BLUEPRINTS)
        rules = {rule.rule: rule.methods or set() for rule in app.url_map.iter_rules()}
        answers: dict[str, int] = {}
        for key in GOAUTH_URI_OPTIONS:
            uri = options[key][0].replace("${LOCKERD_MOSQ_SECRET}", MOSQ_SECRET)
            path = urlsplit(uri).path
            assert path in rules, f"{key}: lockerd serves no {path}"
            assert "POST" in rules[path], key
            body = {
                "auth_opt_http_getuser_uri": {
                    "clientid": "dev-1",
                    "password": "provisioning-password",
                    "username": "provisioning_client",
                },
                "auth_opt_http_aclcheck_uri": {
                    "acc": 2,
                    "clientid": "dev-1",
                    "topic": "locker/register/some-token",
                    "username": "provisioning_client",
                },
            }[key]
            response = await svc.http.post(uri, json=body)
            answers[key] = response.status_code
            wrong = await svc.http.post(uri.replace(MOSQ_SECRET, "wrong"), json=body)
            assert wrong.status_code == 403, key
    # The provisioning user may log in and register.
    assert answers == {"auth_opt_http_getuser_uri": 200, "auth_opt_http_aclcheck_uri": 200}


# --------------------------------------------------------------------------- image


def test_dockerfile_installs_every_package_and_serves() -> None:
    text = DOCKERFILE.read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted({pattern.rstrip("*") for pattern in patterns})
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    for package in packages:
        assert (ROOT / package / "__init__.py").is_file(), package
        assert f"COPY {package}/ {package}/" in text, f"the image lacks {package}"
        assert f"!{package}/" in ignore, f"the build context excludes {package}"
    assert 'CMD ["lockerd", "serve"]' in text
    assert "/healthz" in text
    assert "USER lockerd" in text
    assert "LOCKERD_HTTP=0.0.0.0:8080" in text
