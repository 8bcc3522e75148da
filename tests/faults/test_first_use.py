"""Trying lockerd as a new user (issue 14 finding 10): ``lockerd simulate`` with a wrong token,
without a lockerd or without a broker prints one clear line and exits non-zero, never a
traceback."""

from __future__ import annotations

import os
import sys

import pytest
import trio

from tests.support.mosquitto import MosquittoBroker, free_port
from tests.support.service import RunningLockerd


async def simulate(*args: str, token: str = "wrong-token") -> tuple[int, list[str]]:
    env = {**os.environ, "LOCKERD_ADMIN_TOKEN": token}
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "lockerd.cli", "simulate", *args, "--duration", "5"],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    text = (done.stdout + done.stderr).decode()
    lines = [line for line in text.splitlines() if line.strip()]
    return done.returncode, lines


def assert_one_clear_line(lines: list[str], *words: str) -> None:
    errors = [line for line in lines if line.startswith("lockerd simulate: ")]
    assert len(errors) == 1, lines
    assert "Traceback" not in "\n".join(lines), lines
    assert all(word in errors[0] for word in words), errors[0]
    # at most the "creating N banks" line before it
    assert len(lines) <= 2, lines


async def test_simulate_with_a_wrong_admin_token(
    svc: RunningLockerd, mosquitto: MosquittoBroker
) -> None:
    status, lines = await simulate("--api", svc.base_url, "--mqtt-url", mosquitto.url)
    assert status == 1
    assert_one_clear_line(lines, "admin token", "401")
    listed = await svc.admin_get("/api/admin/locker-banks")
    assert listed.json() == []


async def test_simulate_without_a_lockerd(mosquitto: MosquittoBroker) -> None:
    api = f"http://127.0.0.1:{free_port()}"
    status, lines = await simulate("--api", api, "--mqtt-url", mosquitto.url)
    assert status == 1
    assert_one_clear_line(lines, "cannot reach the lockerd API", api)


@pytest.mark.parametrize("source", ["--api", "--bank-tokens"])
async def test_simulate_without_a_broker(source: str, tmp_path: object) -> None:
    broker = f"mqtt://127.0.0.1:{free_port()}"
    value = "http://127.0.0.1:9" if source == "--api" else "/dev/null"
    status, lines = await simulate(source, value, "--mqtt-url", broker)
    assert status == 1
    assert_one_clear_line(lines, "cannot reach the broker", broker.removeprefix("mqtt://"))
