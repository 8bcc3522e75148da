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
    "auth_opt_http_superuser_uri",
    "auth_opt_http_aclcheck_uri",
)


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
        assert "mosquitto" in node["depends_on"]
        assert "ports" not in node  # reached through the proxy only
        assert node["stop_grace_period"] == "20s"

    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no health check"
        assert service.get("restart") == "unless-stopped", name

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
    assert one("auth_plugin") == "/mosquitto/go-auth.so"
    assert one("auth_opt_backends") == "http"
    assert one("auth_opt_http_host") == "lockerd"
    assert one("auth_opt_http_port") == "8080"
    assert one("auth_opt_http_params_mode") == "json"
    assert one("auth_opt_http_response_mode") == "status"
    assert one("auth_opt_http_method") == "POST"
    assert one("auth_opt_cache") == "true"
    assert int(one("auth_opt_auth_cache_seconds")) == 30
    assert int(one("auth_opt_acl_cache_seconds")) == 30
    assert "auth_opt_cache_refresh" not in options  # a hit must not keep a revoked entry alive
    assert one("persistence") == "true"
    assert options["listener"] == ["1883"]
    for key in GOAUTH_URI_OPTIONS:
        query = parse_qs(urlsplit(one(key)).query)
        assert query == {"mosq_secret": ["${LOCKERD_MOSQ_SECRET}"]}, key
    # The only placeholder is the one the entrypoint fills in.
    assert variables_used(TEMPLATE.read_text()) == {"LOCKERD_MOSQ_SECRET"}


def run_entrypoint(tmp_path: Path, secret: str | None) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "MOSQUITTO_CONF_TEMPLATE": str(TEMPLATE),
        "MOSQUITTO_CONF": str(tmp_path / "etc" / "mosquitto.conf"),
        "MOSQUITTO_BIN": "echo",  # stands in for mosquitto: shows how it would be started
    }
    if secret is not None:
        env["LOCKERD_MOSQ_SECRET"] = secret
    return subprocess.run(
        ["sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_entrypoint_writes_the_config_with_the_secret(tmp_path: Path) -> None:
    done = run_entrypoint(tmp_path, "s3cr3t-Value_1.~")
    assert done.returncode == 0, done.stderr
    conf = tmp_path / "etc" / "mosquitto.conf"
    assert done.stdout.split() == ["-c", str(conf)]
    text = conf.read_text()
    assert "${" not in text
    assert text.count("?mosq_secret=s3cr3t-Value_1.~") == 3
    assert text.replace("s3cr3t-Value_1.~", "${LOCKERD_MOSQ_SECRET}") == TEMPLATE.read_text()
    assert oct(conf.stat().st_mode & 0o777) == "0o644"


@pytest.mark.parametrize(
    ("secret", "message"),
    [(None, "not set"), ("", "not set"), ("a&b", "only contain"), ("x|y", "only contain")],
)
def test_entrypoint_refuses_a_missing_or_unsafe_secret(
    tmp_path: Path, secret: str | None, message: str
) -> None:
    done = run_entrypoint(tmp_path, secret)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "etc" / "mosquitto.conf").exists()


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
                "auth_opt_http_superuser_uri": {"username": "provisioning_client"},
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
    # The provisioning user may log in and register, but is no superuser.
    assert answers == {
        "auth_opt_http_getuser_uri": 200,
        "auth_opt_http_superuser_uri": 403,
        "auth_opt_http_aclcheck_uri": 200,
    }


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
