"""The operators' dashboard in a real browser (headless Debian Chromium through Selenium).

The service runs in-process on Trio; Selenium is blocking, so every browser step runs in a
worker thread. Waits are WebDriverWait conditions on the page, never fixed sleeps. Screenshots
land in ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as paho
import pytest
import trio
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.mosquitto import MosquittoBroker
from tests.support.service import ADMIN_TOKEN, RunningLockerd, lockerd, test_settings

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"
INSTALL_HINT = (
    "the browser test needs Debian's Chromium and its driver: "
    "apt-get install -y chromium chromium-driver (scripts/test.sh installs them)"
)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,1000",
)
WAIT_SECONDS = 20.0

T = TypeVar("T")


def find_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver; fails (never skips) when they are missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        missing = " and ".join(
            name for name, path in (("chromium", chromium), ("chromedriver", driver)) if not path
        )
        pytest.fail(f"{missing} not found: {INSTALL_HINT}", pytrace=False)
    return chromium, driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    chromium, driver_path = find_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


async def in_thread(fn: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(fn)


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    """WebDriverWait with a readable failure message; tolerant of re-rendered elements."""
    wait = WebDriverWait(
        driver,
        WAIT_SECONDS,
        poll_frequency=0.1,
        ignored_exceptions=[StaleElementReferenceException],
    )
    return wait.until(condition, message=f"timed out waiting for {what}")


def row_of(driver: WebDriver, bank_id: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'#banks tbody tr[data-bank-id="{bank_id}"]')


def presence_is(bank_id: str, presence: str) -> Callable[[WebDriver], bool]:
    def check(driver: WebDriver) -> bool:
        rows = driver.find_elements(By.CSS_SELECTOR, f'tr[data-bank-id="{bank_id}"]')
        return bool(
            rows
            and rows[0].get_attribute("data-presence") == presence
            and rows[0].find_element(By.CSS_SELECTOR, "td.presence").text == presence
        )

    return check


def text_in(selector: str, *needles: str) -> Callable[[WebDriver], bool]:
    def check(driver: WebDriver) -> bool:
        found = driver.find_elements(By.CSS_SELECTOR, selector)
        return bool(found) and all(needle in found[0].text for needle in needles)

    return check


def screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    return path


def heartbeat_payload(uptime: int) -> bytes:
    return json.dumps(
        {
            "type": "state",
            "state": "heartbeat",
            "data": {"timestamp": "2026-11-24T10:00:00Z", "uptime_seconds": uptime},
        }
    ).encode()


class Device:
    """A locker bank's controller, as far as heartbeats go (paho, QoS 1)."""

    def __init__(self, broker: MosquittoBroker, bank_id: str) -> None:
        self.topic = f"locker/{bank_id}/state"
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"device-{bank_id}")
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.uptime = 0

    def heartbeat(self) -> None:
        self.uptime += 1
        self.client.publish(self.topic, heartbeat_payload(self.uptime), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def open_dashboard(driver: WebDriver, svc: RunningLockerd, token: str) -> None:
    def sign_in() -> None:
        driver.get(f"{svc.base_url}/dashboard")
        field = wait_for(
            driver,
            lambda d: (
                d.find_element(By.ID, "token").is_displayed() and d.find_element(By.ID, "token")
            ),
            "the token field",
        )
        field.clear()
        field.send_keys(token)
        driver.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()

    await in_thread(sign_in)


async def test_dashboard_follows_a_bank_online_and_offline(
    mosquitto: MosquittoBroker, tmp_path: Path, browser: WebDriver
) -> None:
    settings = test_settings(mosquitto.url, tmp_path / "lockerd.db")
    async with lockerd(settings) as svc:
        bank = await svc.create_bank(
            name="Central Station",
            location="Hall B, by the ticket office",
            compartments=6,
            heartbeat_interval_seconds=1,
        )
        other = await svc.create_bank(name="Airport T1", location="Arrivals", compartments=4)
        await svc.create_bank(name="Library", location="Ground floor", compartments=2)

        # a wrong token is refused at the sign-in form
        await open_dashboard(browser, svc, "not-the-token")
        await in_thread(
            lambda: wait_for(browser, text_in("#login-error", "not accepted"), "the refusal")
        )

        await open_dashboard(browser, svc, ADMIN_TOKEN)
        await in_thread(
            lambda: wait_for(browser, text_in("#connection", "Live"), "the live connection")
        )
        await in_thread(
            lambda: wait_for(browser, presence_is(bank["id"], "unknown"), "the bank, unknown")
        )
        assert (
            await in_thread(
                lambda: browser.execute_script(
                    "return sessionStorage.getItem('lockerd.adminToken')"
                )
            )
            == ADMIN_TOKEN
        )
        names = await in_thread(
            lambda: [
                row.find_element(By.CSS_SELECTOR, ".bank-link").text
                for row in browser.find_elements(By.CSS_SELECTOR, "#banks tbody tr")
            ]
        )
        assert names == ["Airport T1", "Central Station", "Library"]

        # the device starts sending heartbeats: the row turns online
        device = await in_thread(lambda: Device(mosquitto, bank["id"]))
        try:
            await in_thread(device.heartbeat)
            await in_thread(
                lambda: wait_for(browser, presence_is(bank["id"], "online"), "the bank online")
            )
            await in_thread(device.heartbeat)
            await in_thread(lambda: screenshot(browser, "dashboard-online.png"))
            last_seen = await in_thread(
                lambda: row_of(browser, bank["id"]).find_element(By.CSS_SELECTOR, "td.last-seen")
            )
            assert re.fullmatch(r"\d+ s ago", await in_thread(lambda: last_seen.text))
        finally:
            await in_thread(device.close)

        # open its details while it is online
        await in_thread(
            lambda: row_of(browser, bank["id"]).find_element(By.CSS_SELECTOR, ".bank-link").click()
        )
        await in_thread(
            lambda: wait_for(
                browser, text_in("#detail-title", "Central Station"), "the bank's details"
            )
        )
        doors = await in_thread(
            lambda: [item.text for item in browser.find_elements(By.CSS_SELECTOR, "#doors li")]
        )
        assert len(doors) == 6
        assert all(door.endswith("unknown") for door in doors), doors
        await in_thread(
            lambda: wait_for(
                browser,
                text_in("#history", "LockerBankCreated", "LockerBankCameOnline"),
                "the event history",
            )
        )
        # details are key/value chips, each on one line: never raw text wrapping mid-token
        chips = await in_thread(
            lambda: browser.execute_script(
                "return [...document.querySelectorAll('#history .kv')].map((e) => "
                "[e.textContent, e.getClientRects().length])"
            )
        )
        assert chips, "the history shows no details"
        assert all(rects == 1 for _, rects in chips), chips
        assert any(text.startswith("name") for text, _ in chips), chips

        # heartbeats have stopped: three intervals later the bank is offline, the history
        # reloads by itself, and "last seen" keeps counting up every second
        await in_thread(
            lambda: wait_for(browser, presence_is(bank["id"], "offline"), "the bank offline")
        )
        await in_thread(
            lambda: wait_for(
                browser, text_in("#history", "LockerBankWentOffline"), "the offline event"
            )
        )

        def seconds_ago(driver: WebDriver) -> int:
            text = row_of(driver, bank["id"]).find_element(By.CSS_SELECTOR, "td.last-seen").text
            found = re.fullmatch(r"(\d+) s ago", text)
            return int(found.group(1)) if found else -1

        first = await in_thread(
            lambda: wait_for(browser, lambda d: seconds_ago(d) >= 3 and seconds_ago(d), "3 s")
        )
        await in_thread(
            lambda: wait_for(browser, lambda d: seconds_ago(d) > first, "the clock to tick")
        )
        await in_thread(
            lambda: wait_for(browser, text_in("#summary", "3 banks", "0 online", "1 offline"), "")
        )
        # offline for longer than 3 intervals: the durable alert is in the bank's details
        await in_thread(
            lambda: wait_for(
                browser, text_in("#alerts", "bank_offline", "open"), "the offline alert"
            )
        )
        shot = await in_thread(lambda: screenshot(browser, "dashboard-offline.png"))
        assert shot.stat().st_size > 10_000

        # the filter narrows the table
        def filter_by(text: str) -> list[str]:
            box = browser.find_element(By.ID, "filter")
            box.clear()
            box.send_keys(text)
            return [
                row.get_attribute("data-bank-id") or ""
                for row in browser.find_elements(By.CSS_SELECTOR, "#banks tbody tr")
                if row.is_displayed()
            ]

        assert await in_thread(lambda: filter_by("arrivals")) == [other["id"]]
        assert await in_thread(lambda: filter_by("offline")) == [bank["id"]]
        assert await in_thread(lambda: filter_by("")) != []

        # the server drops the page (as it does a slow one): it reconnects by itself
        hub = svc.context.status_hub
        assert len(hub.sessions) == 1
        for session in list(hub.sessions):
            session.finish((1013, "too slow: test", "slow"))
        await in_thread(
            lambda: wait_for(browser, text_in("#connection", "reconnecting"), "the drop")
        )
        await in_thread(
            lambda: wait_for(browser, text_in("#connection", "Live"), "the reconnection")
        )
        assert len(hub.sessions) == 1
        await in_thread(lambda: wait_for(browser, presence_is(bank["id"], "offline"), "state"))
        await in_thread(lambda: screenshot(browser, "dashboard.png"))

        severe = [
            entry
            for entry in await in_thread(lambda: browser.get_log("browser"))
            if entry["level"] == "SEVERE"
            # the refused sign-in at the start: Chromium logs the 401 of the token check
            and "00000000-0000-0000-0000-000000000000" not in entry["message"]
        ]
        assert severe == [], severe
