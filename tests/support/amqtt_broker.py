"""An amqtt 0.12.1 broker that asks lockerd's go-auth endpoints, as a separate process.

    python -m tests.support.amqtt_broker --port P --http-port H --secret S [--form]

amqtt is asyncio-based and lockerd's tests run on Trio, so the broker lives in its own process.
Its HTTP auth plugins are configured from Python (research/goauth.md §2: the enum fields cannot
be given as strings): POST, JSON (or form) bodies, status response mode — go-auth's defaults.
The plugins call ``/api/mosq/auth`` at CONNECT and ``/api/mosq/acl`` for every subscribe (acc 4),
publish (acc 2) and delivery (acc 1); they send ``client_id`` rather than go-auth's
``clientid`` and never call ``/superuser``. No other auth plugin is loaded, so lockerd alone
decides who may connect.

Prints ``READY <port>`` on stdout once the listener accepts connections and runs until stdin
closes or SIGTERM/SIGINT arrives.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any
from urllib.parse import quote


def broker_config(
    port: int, http_host: str, http_port: int, secret: str, *, form: bool = False
) -> dict[str, Any]:
    from amqtt.contrib.http import (  # type: ignore[import-untyped]
        ParamsMode,
        RequestMethod,
        ResponseMode,
    )

    common: dict[str, Any] = {
        "host": http_host,
        "port": http_port,
        "request_method": RequestMethod.POST,
        "params_mode": ParamsMode.FORM if form else ParamsMode.JSON,
        "response_mode": ResponseMode.STATUS,
        "user_agent": "amqtt",
    }
    query = f"?mosq_secret={quote(secret, safe='')}"
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {
            "amqtt.contrib.http.UserAuthHttpPlugin": {
                **common,
                "user_uri": f"/api/mosq/auth{query}",
            },
            "amqtt.contrib.http.TopicAuthHttpPlugin": {
                **common,
                "topic_uri": f"/api/mosq/acl{query}",
            },
        },
    }


async def serve(args: argparse.Namespace) -> None:
    from amqtt.broker import Broker  # type: ignore[import-untyped]

    config = broker_config(args.port, args.http_host, args.http_port, args.secret, form=args.form)
    broker = Broker(config)
    await broker.start()
    print(f"READY {args.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(broker.shutdown(), timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--http-host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--form", action="store_true", help="form bodies instead of JSON")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s amqtt %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
