"""``lockerd provision-test``: play a factory-fresh device against a running deployment.

It walks the contract's provisioning flow step by step and prints each one:

1. connect to the broker as the shared provisioning user (clean session),
2. subscribe to ``locker/provisioning/reply/{client_id}``,
3. publish ``{"client_id": …}`` on ``locker/register/{token}``,
4. wait for the reply; an error reply ends the run with its message,
5. reconnect with the issued credentials (persistent session, last will on
   ``locker/{bank}/state``), subscribe to ``locker/{bank}/command``,
6. publish a retained heartbeat on ``locker/{bank}/state`` and disconnect gracefully.

Exit status 0 when every step worked; 1 with the reason on stderr otherwise; 2 for bad usage.
The provisioning token is single use: a successful run consumes it, and because the run sends a
heartbeat, the lost-reply rule no longer lets it be redeemed again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

import trio

from lockerd.device.protocol import iso, utc_now

NAMES: tuple[str, ...] = ("provision-test",)
HELP: dict[str, str] = {
    "provision-test": "act as a new device: redeem a provisioning token over MQTT, then connect"
    " with the issued credentials and send a heartbeat"
}

DEFAULT_PROVISIONING_USER = "provisioning_client"


class ProvisionTestFailed(Exception):
    """A step failed; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Options:
    token: str
    host: str
    port: int
    provisioning_user: str
    provisioning_password: str | None
    client_id: str
    timeout: float
    show_password: bool


@dataclass(frozen=True, slots=True)
class Credentials:
    bank_id: str
    mqtt_user: str
    mqtt_password: str


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token", required=True, help="the bank's provisioning token")
    parser.add_argument(
        "--broker",
        default=None,
        help="mqtt://host:port of the broker devices use (default: host and port of"
        " LOCKERD_MQTT_URL, else mqtt://127.0.0.1:1883; credentials in the URL are ignored)",
    )
    parser.add_argument(
        "--provisioning-user",
        default=None,
        help="shared provisioning login (default: LOCKERD_PROVISIONING_USER or"
        f" {DEFAULT_PROVISIONING_USER})",
    )
    parser.add_argument(
        "--provisioning-password",
        default=None,
        help="its password (default: LOCKERD_PROVISIONING_PASSWORD)",
    )
    parser.add_argument(
        "--client-id",
        default=None,
        help="the device's MQTT client id (default: provision-test-<random>)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for each step (default: 10)",
    )
    parser.add_argument(
        "--show-password",
        action="store_true",
        help="print the issued MQTT password in full (masked by default)",
    )


def parse_broker(url: str) -> tuple[str, int]:
    parts = urlsplit(url.strip())
    if parts.scheme != "mqtt" or not parts.hostname:
        raise ValueError(f"--broker: expected mqtt://host:port, got {url!r}")
    try:
        port = parts.port or 1883
    except ValueError:
        raise ValueError(f"--broker: invalid port in {url!r}") from None
    return unquote(parts.hostname), port


def options_from(args: argparse.Namespace) -> Options:
    broker = args.broker or os.environ.get("LOCKERD_MQTT_URL") or "mqtt://127.0.0.1:1883"
    host, port = parse_broker(broker)
    client_id = args.client_id or f"provision-test-{uuid.uuid4().hex[:12]}"
    if not client_id or any(ch in client_id for ch in "/+#\x00"):
        raise ValueError("--client-id must be non-empty and contain no '/', '+' or '#'")
    token = args.token.strip()
    if not token or any(ch in token for ch in "/+#\x00"):
        raise ValueError("--token must be one non-empty MQTT topic level")
    if not args.timeout > 0:
        raise ValueError("--timeout must be positive")
    user = (
        args.provisioning_user
        or os.environ.get("LOCKERD_PROVISIONING_USER")
        or DEFAULT_PROVISIONING_USER
    )
    password = args.provisioning_password
    if password is None:
        password = os.environ.get("LOCKERD_PROVISIONING_PASSWORD") or None
    return Options(
        token=token,
        host=host,
        port=port,
        provisioning_user=user,
        provisioning_password=password,
        client_id=client_id,
        timeout=float(args.timeout),
        show_password=bool(args.show_password),
    )


def mask(secret: str, show: bool) -> str:
    if show or len(secret) <= 8:
        return secret if show else "****"
    return f"{secret[:4]}…({len(secret)} chars)"


def parse_reply(payload: bytes) -> Credentials:
    try:
        reply: Any = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProvisionTestFailed(f"the reply is not JSON: {exc}") from None
    if not isinstance(reply, dict):
        raise ProvisionTestFailed("the reply is not a JSON object")
    if reply.get("status") == "error":
        raise ProvisionTestFailed(f"provisioning refused: {reply.get('message')!s}")
    data = reply.get("data")
    if reply.get("status") != "success" or not isinstance(data, dict):
        raise ProvisionTestFailed(f"unexpected reply: {reply!r}")
    fields = [data.get(key) for key in ("locker_bank_id", "mqtt_user", "mqtt_password")]
    if not all(isinstance(value, str) and value for value in fields):
        raise ProvisionTestFailed("the success reply lacks locker_bank_id/mqtt_user/mqtt_password")
    bank_id, user, password = (str(value) for value in fields)
    return Credentials(bank_id, user, password)


async def provision(options: Options, out: TextIO) -> Credentials:
    """Steps 1-4: redeem the token as the provisioning user; returns the issued credentials."""
    from gateway.mqtt import ConnectionRefusedByBroker, MqttError, MqttSettings, open_mqtt_client

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    reply_topic = f"locker/provisioning/reply/{options.client_id}"
    say(
        f"[1/6] connecting to mqtt://{options.host}:{options.port} as"
        f" {options.provisioning_user!r} (client id {options.client_id!r})"
    )
    settings = MqttSettings(
        host=options.host,
        port=options.port,
        client_id=options.client_id,
        username=options.provisioning_user,
        password=options.provisioning_password,
        clean_session=True,
        connect_timeout=options.timeout,
    )
    try:
        async with open_mqtt_client(settings, reconnect=False) as client:
            say("      connected")
            with trio.fail_after(options.timeout):
                await client.subscribe([(reply_topic, 1)])
            say(f"[2/6] subscribed to {reply_topic}")
            payload = json.dumps({"client_id": options.client_id}).encode()
            with trio.fail_after(options.timeout):
                await client.publish(f"locker/register/{options.token}", payload, qos=1)
            say(
                f"[3/6] published {payload.decode()} to"
                f" locker/register/{mask(options.token, False)}"
            )
            with trio.fail_after(options.timeout):
                async for message in client.messages():
                    if message.topic == reply_topic:
                        break
                else:
                    raise ProvisionTestFailed("the connection closed before a reply arrived")
            credentials = parse_reply(message.payload)
            say(
                f"[4/6] provisioned: locker_bank_id={credentials.bank_id}"
                f" mqtt_user={credentials.mqtt_user}"
                f" mqtt_password={mask(credentials.mqtt_password, options.show_password)}"
            )
            return credentials
    except ConnectionRefusedByBroker as exc:
        raise ProvisionTestFailed(f"the broker refused the provisioning login: {exc}") from None
    except trio.TooSlowError:
        raise ProvisionTestFailed(
            f"no answer within {options.timeout:g} s (is lockerd connected to this broker?)"
        ) from None
    except (MqttError, OSError) as exc:
        raise ProvisionTestFailed(f"MQTT error while provisioning: {exc}") from None


async def first_heartbeat(options: Options, credentials: Credentials, out: TextIO) -> None:
    """Steps 5-6: connect as the provisioned device and publish a heartbeat."""
    from gateway.mqtt import (
        ConnectionRefusedByBroker,
        MqttError,
        MqttSettings,
        Will,
        open_mqtt_client,
    )

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    bank = credentials.bank_id
    session_id = uuid.uuid4().hex
    will = json.dumps(
        {
            "type": "state",
            "state": "connection_lost",
            "status": "offline",
            "timestamp": iso(utc_now()),
            "reason": "unexpected disconnect",
            "session_id": session_id,
        }
    ).encode()
    settings = MqttSettings(
        host=options.host,
        port=options.port,
        client_id=options.client_id,
        username=credentials.mqtt_user,
        password=credentials.mqtt_password,
        clean_session=False,
        will=Will(f"locker/{bank}/state", will, qos=1, retain=True),
        connect_timeout=options.timeout,
    )
    try:
        async with open_mqtt_client(settings, reconnect=False) as client:
            with trio.fail_after(options.timeout):
                await client.subscribe([(f"locker/{bank}/command", 1)])
            say(
                f"[5/6] reconnected as {credentials.mqtt_user} (persistent session, last will on"
                f" locker/{bank}/state) and subscribed to locker/{bank}/command"
            )
            heartbeat = json.dumps(
                {
                    "type": "state",
                    "state": "heartbeat",
                    "data": {"timestamp": iso(utc_now()), "uptime_seconds": 0},
                    "session_id": session_id,
                }
            ).encode()
            with trio.fail_after(options.timeout):
                await client.publish(f"locker/{bank}/state", heartbeat, qos=1, retain=True)
            say(f"[6/6] heartbeat published to locker/{bank}/state: {heartbeat.decode()}")
    except ConnectionRefusedByBroker as exc:
        raise ProvisionTestFailed(f"the broker refused the issued credentials: {exc}") from None
    except trio.TooSlowError:
        raise ProvisionTestFailed(
            f"the broker did not acknowledge within {options.timeout:g} s"
        ) from None
    except (MqttError, OSError) as exc:
        raise ProvisionTestFailed(f"MQTT error with the issued credentials: {exc}") from None


async def run_provision_test(options: Options, out: TextIO = sys.stdout) -> Credentials:
    credentials = await provision(options, out)
    await first_heartbeat(options, credentials, out)
    print("provision-test: OK", file=out, flush=True)
    return credentials


def run(args: argparse.Namespace) -> int:
    try:
        options = options_from(args)
    except ValueError as exc:
        print(f"provision-test: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(run_provision_test, options)
    except ProvisionTestFailed as exc:
        print(f"provision-test: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("provision-test: interrupted", file=sys.stderr)
        return 130
    return 0
