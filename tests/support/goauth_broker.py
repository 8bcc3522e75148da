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
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

from tests.support.mosquitto import MosquittoBroker, find_mosquitto

PLUGIN_SOURCE = Path(__file__).with_name("goauth_plugin") / "goauth_plugin.c"
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
        **broker_options: Any,
    ) -> None:
        self.goauth = config
        self.plugin_path = build_goauth_plugin() if plugin is None else plugin
        self.plugin_log_path = workdir / "goauth-plugin.jsonl"
        lines = [*config.config_lines(self.plugin_path, self.plugin_log_path), *extra_config]
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
