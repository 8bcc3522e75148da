"""A private Mosquitto broker for tests.

Each instance runs the Debian ``mosquitto`` binary on its own free loopback port with its
own config, persistence directory and log file, so tests never touch a system broker
(which may be listening on 1883) and never share state with each other.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

INSTALL_HINT = "install the Debian package mosquitto (apt-get install mosquitto)"


class MosquittoNotInstalled(RuntimeError):
    """The mosquitto binary (or one of its tools) is not on this machine."""


class MosquittoStartError(RuntimeError):
    """The broker did not come up; the message carries its log."""


def find_mosquitto() -> str:
    """Path of the mosquitto broker binary, or raise MosquittoNotInstalled."""
    found = shutil.which("mosquitto")
    if found:
        return found
    if os.access("/usr/sbin/mosquitto", os.X_OK):
        return "/usr/sbin/mosquitto"
    raise MosquittoNotInstalled(f"mosquitto broker binary not found: {INSTALL_HINT}")


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (bind to port 0 and ask the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_password_file(path: Path, users: Mapping[str, str]) -> Path:
    """Create a mosquitto password file with `mosquitto_passwd -b` for each user."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        raise MosquittoNotInstalled(f"mosquitto_passwd not found: {INSTALL_HINT}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    for user, password in users.items():
        subprocess.run(
            [tool, "-b", str(path), user, password],
            check=True,
            capture_output=True,
            timeout=30,
        )
    return path


class MosquittoBroker:
    """A mosquitto process on ``127.0.0.1:<free port>`` with a config of its own.

    ``persistence`` is on, in the work directory, so a persistent session survives
    ``stop()``/``start()`` (a graceful SIGTERM makes mosquitto save its database);
    ``kill()`` loses whatever was not saved, as a crash would. ``queue_defaults=False`` leaves
    the queue limits to ``extra_config`` (or Mosquitto's defaults).
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        port: int | None = None,
        allow_anonymous: bool = True,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        log_to_topic: bool = False,
        extra_config: Sequence[str] = (),
        start_timeout: float = 10.0,
        queue_defaults: bool = True,
    ) -> None:
        self._binary = find_mosquitto()
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="mosquitto-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port() if port is None else port
        self.start_timeout = start_timeout
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.persistence_dir = self.workdir / "data"
        self.persistence_dir.mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if allow_anonymous else 'false'}",
            "persistence true",
            f"persistence_location {self.persistence_dir}/",
            *(["max_queued_messages 100000"] if queue_defaults else []),
            "log_dest stderr",
            "log_timestamp true",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            # Run as root: mosquitto would otherwise drop to the `mosquitto` user, which
            # cannot write our temp persistence directory.
            lines.append(f"user {getpass.getuser()}")
        if log_to_topic:
            # Also publish the broker's log on $SYS/broker/log/<level>, so a test can
            # await "Client X disconnected." over MQTT instead of polling a file.
            lines.append("log_dest topic")
        if password_file is not None:
            lines.append(f"password_file {password_file}")
        if acl_file is not None:
            lines.append(f"acl_file {acl_file}")
        lines.extend(extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: int | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> None:
        """Start mosquitto and return once its port accepts TCP connections."""
        if self.running:
            raise RuntimeError("mosquitto is already running")
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self._process = subprocess.Popen(
                [self._binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                cwd=self.workdir,
            )
        finally:
            os.close(log_fd)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise MosquittoStartError(
                    f"mosquitto exited with code {code} at start-up; log:\n{self.log_text()}"
                )
            if self._accepts_connections():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise MosquittoStartError(
                    f"mosquitto did not accept connections on {self.host}:{self.port} within "
                    f"{self.start_timeout} s; log:\n{self.log_text()}"
                )
            # Readiness of an external process cannot be awaited: poll the port.
            time.sleep(0.01)

    def _accepts_connections(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM): mosquitto saves its persistence database."""
        proc = self._process
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._process = None

    def kill(self) -> None:
        """Abrupt stop (SIGKILL): nothing is saved, like a crash."""
        proc = self._process
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._process = None

    def pause(self) -> None:
        """SIGSTOP the broker: its sockets stay open but nothing is answered."""
        if self._process is None:
            raise RuntimeError("mosquitto is not running")
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a paused broker."""
        if self._process is None:
            raise RuntimeError("mosquitto is not running")
        self._process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Graceful stop, then start again on the same port with the same data."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the broker and remove the work directory if this object created it."""
        if self._process is not None and self._process.poll() is None:
            # A paused broker ignores SIGTERM until continued.
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGCONT)
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<MosquittoBroker {self.url} {state} workdir={self.workdir}>"
