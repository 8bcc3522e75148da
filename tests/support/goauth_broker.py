"""A real Mosquitto that asks an HTTP backend exactly as mosquitto-go-auth 3.0.0 does.

go-auth itself cannot be built here, so ``goauth_plugin/goauth_plugin.c`` reproduces its HTTP
backend as a small Mosquitto 2.0 plugin (see the README there and research/goauth.md). This
module compiles it once per source version into a cache directory and starts brokers with it::

    broker = start_goauth_broker(
        tmp_path / "broker",
        GoAuthConfig(http_port=8080, secret="s3cr3t", cache=True, acl_cache_seconds=1),
    )
    ...
    broker.plugin_requests()  # every HTTP request the plugin made, oldest first
    broker.close()

or, in a test, the ``goauth_broker_factory`` fixture (tests/support/fixtures.py).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from tests.support.mosquitto import MosquittoBroker, find_mosquitto

PLUGIN_SOURCE = Path(__file__).with_name("goauth_plugin") / "goauth_plugin.c"
REPO = Path(__file__).resolve().parents[2]
COMPOSE_ENTRYPOINT = REPO / "docker" / "mosquitto" / "entrypoint.sh"
COMPOSE_TEMPLATE = REPO / "docker" / "mosquitto" / "mosquitto.conf.template"
CFLAGS = ("-Wall", "-Wextra", "-Werror", "-O2", "-fPIC", "-shared")
LIBS = ("-lcurl", "-lcrypto")
DEBIAN_PACKAGES = ("mosquitto-dev", "libcurl4-openssl-dev", "libssl-dev")
# header → the Debian package that provides it
HEADERS = {
    "mosquitto_broker.h": "mosquitto-dev",
    "mosquitto_plugin.h": "mosquitto-dev",
    "curl/curl.h": "libcurl4-openssl-dev",
    "openssl/evp.h": "libssl-dev",
}
INSTALL_HINT = f"install the Debian packages {' and '.join(DEBIAN_PACKAGES)} (scripts/bootstrap.sh)"

ParamsMode = Literal["json", "form"]
ResponseMode = Literal["status", "json", "text"]


class GoAuthPluginBuildError(RuntimeError):
    """The plugin could not be compiled; the message says what to install or what gcc said."""


def _compiler() -> str:
    for name in ("gcc", "cc"):
        found = shutil.which(name)
        if found:
            return found
    raise GoAuthPluginBuildError(f"no C compiler (gcc) found: install gcc; also {INSTALL_HINT}")


def _missing_headers(compiler: str) -> list[str]:
    missing = []
    for header in HEADERS:
        probe = subprocess.run(
            [compiler, "-E", "-x", "c", "-", "-o", os.devnull],
            input=f"#include <{header}>\n".encode(),
            capture_output=True,
            timeout=60,
        )
        if probe.returncode != 0:
            missing.append(header)
    return missing


def mosquitto_version() -> str:
    """The installed broker's version (``mosquitto -h`` prints ``mosquitto version X``)."""
    out = subprocess.run([find_mosquitto(), "-h"], capture_output=True, timeout=30)
    found = re.search(rb"mosquitto version (\S+)", out.stdout + out.stderr)
    if found is None:
        raise GoAuthPluginBuildError("cannot tell the mosquitto version from `mosquitto -h`")
    return found.group(1).decode()


def _safe_cache_dir(path: Path) -> Path:
    """Create (or reuse) a private cache directory: a .so found there is loaded into brokers."""
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.geteuid()
        or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ):
        raise GoAuthPluginBuildError(f"refusing to use {path}: not a private directory of ours")
    return path


@functools.cache
def build_goauth_plugin() -> Path:
    """Compile the plugin (once per source, flags and broker version) and return the .so path.

    The result is cached in ``<tmp>/lockerd-goauth-plugin-<hash>/goauth_plugin.so`` and reused by
    later test sessions. Concurrent builders (several pytest processes) each compile to a temp
    name and ``os.replace`` it into place, so nobody ever loads a half-written file.
    """
    source = PLUGIN_SOURCE.read_bytes()
    version = mosquitto_version()
    # go-auth's JSON User-Agent names the libmosquitto headers' version; Debian ships no
    # mosquitto.h, so tell the plugin which broker it is built for.
    defines = (f'-DGOAUTH_MOSQUITTO_VERSION="{version}"',)
    digest = hashlib.sha256()
    for part in (source, *CFLAGS, *defines, *LIBS):
        digest.update(part if isinstance(part, bytes) else part.encode())
        digest.update(b"\0")
    directory = Path(tempfile.gettempdir()) / f"lockerd-goauth-plugin-{digest.hexdigest()[:16]}"
    target = directory / "goauth_plugin.so"
    if target.is_file():
        _safe_cache_dir(directory)
        return target

    compiler = _compiler()
    missing = _missing_headers(compiler)
    if missing:
        packages = sorted({HEADERS[header] for header in missing})
        raise GoAuthPluginBuildError(
            f"cannot build the go-auth test plugin: missing headers {', '.join(missing)}; "
            f"install the Debian package(s) {' '.join(packages)} "
            f"(apt-get install {' '.join(DEBIAN_PACKAGES)})"
        )
    _safe_cache_dir(directory)
    temp = directory / f".goauth_plugin.{os.getpid()}.{uuid.uuid4().hex}.so"
    try:
        result = subprocess.run(
            [compiler, *CFLAGS, *defines, "-o", str(temp), str(PLUGIN_SOURCE), *LIBS],
            capture_output=True,
            timeout=300,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            hint = f"\n({INSTALL_HINT})" if "-lcurl" in output or "No such file" in output else ""
            raise GoAuthPluginBuildError(
                f"gcc failed to build {PLUGIN_SOURCE.name}:\n{output}{hint}"
            )
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return target


@dataclass(frozen=True)
class GoAuthConfig:
    """go-auth's HTTP backend options (``auth_opt_*`` there, ``plugin_opt_*`` here).

    Defaults are go-auth's, with lockerd's endpoints as the uris. ``secret`` is appended to each
    uri as ``?mosq_secret=…`` (URL-quoted), as lockerd's broker config does. ``superuser_uri``
    None leaves ``http_superuser_uri`` unset: no superuser request at all, superuser = false.
    """

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    secret: str | None = None
    getuser_uri: str = "/api/mosq/auth"
    superuser_uri: str | None = "/api/mosq/superuser"
    aclcheck_uri: str = "/api/mosq/acl"
    params_mode: ParamsMode = "json"
    response_mode: ResponseMode = "status"
    timeout: int = 5
    cache: bool = False
    auth_cache_seconds: int = 30
    acl_cache_seconds: int = 30
    retry_count: int = 0
    # any other plugin_opt_<key> <value>, e.g. {"http_method": "PUT"}
    extra_options: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def for_backend(cls, url: str, **fields: Any) -> GoAuthConfig:
        """Options for a backend at ``http://host:port`` (e.g. a running lockerd's base URL)."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected http://host:port, got {url!r}")
        return cls(http_host=parts.hostname, http_port=parts.port or 80, **fields)

    def uri(self, path: str) -> str:
        if self.secret is None:
            return path
        separator = "&" if "?" in path else "?"
        return f"{path}{separator}mosq_secret={quote(self.secret, safe='')}"

    def plugin_options(self, log_file: Path | None = None) -> dict[str, str]:
        options = {
            "http_host": self.http_host,
            "http_port": str(self.http_port),
            "http_getuser_uri": self.uri(self.getuser_uri),
            "http_aclcheck_uri": self.uri(self.aclcheck_uri),
            "http_params_mode": self.params_mode,
            "http_response_mode": self.response_mode,
            "http_timeout": str(self.timeout),
            "cache": "true" if self.cache else "false",
            "auth_cache_seconds": str(self.auth_cache_seconds),
            "acl_cache_seconds": str(self.acl_cache_seconds),
            "retry_count": str(self.retry_count),
        }
        if self.superuser_uri is not None:
            options["http_superuser_uri"] = self.uri(self.superuser_uri)
        if log_file is not None:
            options["log_file"] = str(log_file)
        options.update(self.extra_options)
        return options

    def config_lines(self, plugin: Path, log_file: Path | None = None) -> list[str]:
        """mosquitto.conf lines that load the plugin with these options."""
        lines = ["per_listener_settings false", f"plugin {plugin}"]
        for key, value in self.plugin_options(log_file).items():
            if not re.fullmatch(r"[A-Za-z0-9_]+", key) or "\n" in value or "\r" in value:
                raise ValueError(f"cannot put option {key!r}={value!r} in mosquitto.conf")
            lines.append(f"plugin_opt_{key} {value}")
        return lines


def goauth_password_hash(
    password: str, *, iterations: int = 100_000, salt: bytes | None = None
) -> str:
    """A password hash as go-auth's ``pw`` tool writes it (its defaults: PBKDF2-SHA512, 16 bytes
    of salt, a 64-byte key): ``PBKDF2$sha512$<iterations>$<salt b64>$<hash b64>``. go-auth's
    files backend (and our plugin's) verify these."""
    salt = os.urandom(16) if salt is None else salt
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    encoded = base64.b64encode(salt).decode(), base64.b64encode(key).decode()
    return f"PBKDF2$sha512${iterations}${encoded[0]}${encoded[1]}"


def write_files_backend(
    directory: Path,
    users: Mapping[str, str],
    acl: str,
    *,
    iterations: int = 100_000,
) -> dict[str, str]:
    """Write go-auth files-backend files (``username:hash`` lines; ``acl`` as given) and return
    the plugin options naming them (``files_password_path``, ``files_acl_path``)."""
    directory.mkdir(parents=True, exist_ok=True)
    passwords = directory / "go-auth-passwords"
    acls = directory / "go-auth-acls"
    passwords.write_text(
        "".join(
            f"{user}:{goauth_password_hash(pw, iterations=iterations)}\n"
            for user, pw in users.items()
        )
    )
    acls.write_text(acl)
    return {"files_password_path": str(passwords), "files_acl_path": str(acls)}


class GoAuthBroker(MosquittoBroker):
    """A MosquittoBroker (``allow_anonymous false``) whose only authority is the go-auth plugin.

    ``plugin_log()`` returns the plugin's log file, one dict per line: ``event`` is
    ``request`` (one HTTP request: ``check`` user/superuser/acl, ``method``, ``url`` with the
    secret shown as ``mosq_secret=***``, ``username``, ``clientid``, ``topic``, ``acc``,
    ``status`` or ``error``, ``outcome`` allow/deny/error), ``cache_hit``, ``no_request`` (a
    check answered without asking, with a ``reason``) or ``result`` (what the plugin returned
    to mosquitto for one check). Passwords are never logged.
    """

    def __init__(
        self,
        workdir: Path,
        config: GoAuthConfig,
        *,
        plugin: Path | None = None,
        extra_config: Sequence[str] = (),
        plugin_options: Mapping[str, str] | None = None,
        **broker_options: Any,
    ) -> None:
        """``plugin_options`` replaces the options built from ``config`` (the compose broker
        passes the deployment's own)."""
        self.goauth = config
        # set by start_compose_broker: the deployment's configuration this broker runs
        self.compose: ComposeBrokerConfig | None = None
        self.plugin_path = build_goauth_plugin() if plugin is None else plugin
        self.plugin_log_path = workdir / "goauth-plugin.jsonl"
        if plugin_options is None:
            plugin_lines = config.config_lines(self.plugin_path, self.plugin_log_path)
        else:
            plugin_lines = ["per_listener_settings false", f"plugin {self.plugin_path}"]
            options = {**plugin_options, "log_file": str(self.plugin_log_path)}
            plugin_lines += [f"plugin_opt_{key} {value}" for key, value in options.items()]
        lines = [*plugin_lines, *extra_config]
        super().__init__(workdir, allow_anonymous=False, extra_config=lines, **broker_options)

    def plugin_log_text(self) -> str:
        try:
            return self.plugin_log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def plugin_log(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for line in self.plugin_log_text().splitlines():
            if line.strip():
                entries.append(json.loads(line))
        return entries

    def plugin_requests(self, check: str | None = None) -> list[dict[str, Any]]:
        """The ``request`` entries of the plugin log, optionally only one ``check`` kind."""
        return [
            entry
            for entry in self.plugin_log()
            if entry["event"] == "request" and (check is None or entry["check"] == check)
        ]


# --------------------------------------------------------------------------- the compose broker

_PW_STUB = """#!{python}
# Stands in for go-auth's pw tool (`pw -p <password>`): prints go-auth's PBKDF2-SHA512 hash.
import base64, hashlib, os, sys
args = sys.argv[1:]
if len(args) != 2 or args[0] != "-p":
    sys.exit("usage: pw -p <password>")
salt = os.urandom(16)
key = hashlib.pbkdf2_hmac("sha512", args[1].encode(), salt, {iterations}, 64)
print("PBKDF2$sha512${iterations}$" + base64.b64encode(salt).decode() + "$"
      + base64.b64encode(key).decode())
"""

# mosquitto.conf options of the deployment that a test broker sets its own way
_BROKER_OWN = frozenset(
    {
        "listener",
        "per_listener_settings",
        "allow_anonymous",
        "persistence",
        "persistence_location",
        "log_dest",
        "auth_plugin",
        "user",
    }
)


@dataclass(frozen=True)
class ComposeBrokerConfig:
    """The deployment's Mosquitto configuration, as docker/mosquitto/entrypoint.sh renders it,
    turned into a test broker's: go-auth's ``auth_opt_*`` become our plugin's ``plugin_opt_*``
    (with the backend at ``http_host:http_port`` instead of ``lockerd:8080``), Mosquitto's
    own options (queues, logging) are kept, the listener and persistence are the test's."""

    rendered: str  # the generated mosquitto.conf, verbatim
    files_dir: Path  # the generated go-auth files backend (passwords, acls)
    plugin_options: dict[str, str]
    broker_lines: list[str]


def render_compose_config(
    workdir: Path,
    *,
    secret: str,
    backend_user: str,
    backend_password: str,
    cache_seconds: int,
    http_host: str,
    http_port: int,
    pw_iterations: int = 100_000,
) -> ComposeBrokerConfig:
    """Run the real entrypoint (mosquitto itself replaced by ``true``) and translate its output.

    ``pw_iterations`` is the stand-in pw tool's PBKDF2 cost (go-auth's default is 100,000).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    pw = workdir / "pw"
    pw.write_text(_PW_STUB.format(python=sys.executable, iterations=pw_iterations))
    pw.chmod(0o700)
    conf = workdir / "rendered" / "mosquitto.conf"
    files_dir = workdir / "rendered" / "go-auth"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LOCKERD_MOSQ_SECRET": secret,
        "LOCKERD_BACKEND_MQTT_USER": backend_user,
        "LOCKERD_BACKEND_MQTT_PASSWORD": backend_password,
        "LOCKERD_BROKER_AUTH_CACHE_SECONDS": str(cache_seconds),
        "MOSQUITTO_CONF_TEMPLATE": str(COMPOSE_TEMPLATE),
        "MOSQUITTO_CONF": str(conf),
        "GOAUTH_FILES_DIR": str(files_dir),
        "GOAUTH_PW_BIN": str(pw),
        "MOSQUITTO_FILES_GROUP": "",
        "MOSQUITTO_BIN": "true",
    }
    done = subprocess.run(
        ["sh", str(COMPOSE_ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise RuntimeError(f"entrypoint.sh failed ({done.returncode}): {done.stderr}")
    rendered = conf.read_text()
    options: dict[str, str] = {}
    lines: list[str] = []
    for line in rendered.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, _, value = stripped.partition(" ")
        value = value.strip()
        if key.startswith("auth_opt_"):
            name = key.removeprefix("auth_opt_")
            if name == "http_host":
                value = http_host
            elif name == "http_port":
                value = str(http_port)
            elif name in ("log_dest", "log_file", "log_level"):
                continue  # go-auth's own log; ours is the request log
            options[name] = value
        elif key not in _BROKER_OWN:
            lines.append(stripped)
    return ComposeBrokerConfig(rendered, files_dir, options, lines)


def start_compose_broker(workdir: Path, compose: ComposeBrokerConfig) -> GoAuthBroker:
    """A started broker configured as the deployment configures Mosquitto + go-auth."""
    broker = GoAuthBroker(
        workdir,
        GoAuthConfig(),
        plugin_options=compose.plugin_options,
        extra_config=compose.broker_lines,
        queue_defaults=False,
    )
    broker.compose = compose
    broker.start()
    return broker


def start_goauth_broker(
    workdir: Path,
    config: GoAuthConfig | None = None,
    *,
    extra_config: Sequence[str] = (),
    **broker_options: Any,
) -> GoAuthBroker:
    """Build the plugin if needed and return a started GoAuthBroker (close() it when done)."""
    broker = GoAuthBroker(
        workdir, config or GoAuthConfig(), extra_config=extra_config, **broker_options
    )
    broker.start()
    return broker
