"""One lockerd, one Mosquitto and one headless Chromium shared by a module of console tests.

pytest-trio runs async fixtures per test only; starting lockerd and Chromium for every test
would make the suite slow. So lockerd runs on its own Trio loop in a thread for the whole
module (:class:`Backend`), with simulated devices (tests/support/device.py) that answer
commands and send heartbeats; the tests themselves are plain synchronous Selenium code, and
reach lockerd over its public HTTP API with httpx. Waits are WebDriverWait conditions, never
fixed sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import trio
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from lockerd.config import Settings
from tests.lockerd.dashboard.test_browser import CHROMIUM_FLAGS, find_chromium
from tests.support.device import TestDevice, device, wait_until
from tests.support.mosquitto import MosquittoBroker, MosquittoNotInstalled
from tests.support.service import ADMIN_TOKEN, RunningLockerd, lockerd, test_settings

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "console"
WAIT_SECONDS = 30.0
DESKTOP = (1366, 768)
PHONE = (390, 844)
HEARTBEAT_EVERY = 0.5  # seconds between a simulated device's heartbeats

T = TypeVar("T")


class Backend:
    """lockerd + Mosquitto on a Trio loop in a background thread, for a whole test module."""

    def __init__(self, workdir: Path, **overrides: str) -> None:
        try:
            self.broker = MosquittoBroker(workdir / "mosquitto")
        except MosquittoNotInstalled as exc:
            pytest.fail(str(exc), pytrace=False)
        self.broker.start()
        self.settings: Settings = test_settings(
            self.broker.url, workdir / "lockerd.db", **overrides
        )
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._nursery: trio.Nursery | None = None
        self.svc: RunningLockerd | None = None
        self.devices: dict[str, TestDevice] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._thread = threading.Thread(target=self._run, name="lockerd-under-test", daemon=True)
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("lockerd did not start within 60 s")
        if self._failure is not None:
            raise RuntimeError("lockerd failed to start") from self._failure
        assert self.svc is not None
        self.base_url = self.svc.base_url
        self.http = httpx.Client(base_url=self.base_url, timeout=30.0)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with lockerd(self.settings) as svc, trio.open_nursery() as nursery:
            self.svc = svc
            self._nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run an async function on lockerd's loop and return its result."""
        assert self._token is not None
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def close(self) -> None:
        self.http.close()
        if self._token is not None and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(60)
        self.broker.close()

    # ---- the public API, as an admin ---------------------------------------------------

    def admin(self, method: str, path: str, json: Any = None, token: str = ADMIN_TOKEN) -> Any:
        response = self.http.request(
            method, path, json=json, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.is_success, f"{method} {path}: {response.status_code} {response.text}"
        return response.json() if response.content else None

    def create_bank(self, name: str, compartments: int = 3, **fields: Any) -> dict[str, Any]:
        body = {
            "name": name,
            "compartments": [
                {"number": n, "slave_id": 1, "address": n - 1} for n in range(1, compartments + 1)
            ],
            **fields,
        }
        created: dict[str, Any] = self.admin("POST", "/api/admin/locker-banks", body)
        return created

    def create_user(self, email: str, password: str, role: str = "user", name: str = "") -> str:
        body = {"email": email, "password": password, "name": name or email, "role": role}
        created: dict[str, Any] = self.admin("POST", "/api/admin/users", body)
        return str(created["id"])

    # ---- simulated devices ---------------------------------------------------------------

    def start_device(self, bank_id: str) -> TestDevice:
        """A device for the bank that answers every command and sends heartbeats until the
        module ends (or :meth:`stop_device`); returned once it has applied the bank's
        configuration (the ``apply_config`` its first heartbeat brings, contract §2), so that
        the tests start from a settled bank."""

        async def start() -> TestDevice:
            assert self._nursery is not None and self.svc is not None
            started: TestDevice = await self._nursery.start(self._device, bank_id)
            fleet = self.svc.context.fleet

            async def configured() -> bool:
                status = fleet.banks.get(bank_id)
                return (
                    status is not None
                    and status.config_hash is not None
                    and status.applied_config_hash == status.config_hash
                )

            await wait_until(fleet, configured, what=f"bank {bank_id} configured")
            return started

        dev: TestDevice = self.call(start)
        self.devices[bank_id] = dev
        return dev

    async def _device(
        self, bank_id: str, *, task_status: trio.TaskStatus[TestDevice] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.CancelScope() as scope:
            self._scopes[bank_id] = scope
            async with device(self.broker.url, bank_id) as dev:
                await dev.heartbeat(retain=False)
                task_status.started(dev)
                while True:
                    # a simulated device's heartbeat clock: this is what it does, not a wait
                    await trio.sleep(HEARTBEAT_EVERY)
                    await dev.heartbeat(retain=False)

    def stop_device(self, bank_id: str) -> None:
        async def stop() -> None:
            self._scopes.pop(bank_id).cancel()

        self.call(stop)
        self.devices.pop(bank_id, None)


# ---- the browser -----------------------------------------------------------------------------


@contextmanager
def chromium(profile: Path) -> Iterator[WebDriver]:
    binary, driver_path = find_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        if not flag.startswith("--window-size"):
            options.add_argument(flag)
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=DriverService(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], T], what: str) -> T:
    """WebDriverWait with a readable failure message; tolerant of re-rendered elements."""
    wait = WebDriverWait(
        driver,
        WAIT_SECONDS,
        poll_frequency=0.05,
        ignored_exceptions=[StaleElementReferenceException],
    )
    return wait.until(condition, message=f"timed out waiting for {what}")


def read(driver: WebDriver, observe: Callable[[WebDriver], T], what: str) -> T:
    """``observe(driver)``, tried again while a live update re-renders the elements it reads
    (a stale element): what the page shows now, not a wait for a condition."""
    observed: tuple[T] = wait_for(driver, lambda d: (observe(d),), f"reading {what}")
    return observed[0]


def visible(driver: WebDriver, selector: str) -> WebElement:
    def check(d: WebDriver) -> WebElement | bool:
        found = [e for e in d.find_elements(By.CSS_SELECTOR, selector) if e.is_displayed()]
        return found[0] if found else False

    element: WebElement = wait_for(driver, check, f"{selector} to show")  # type: ignore[arg-type]
    return element


def text_of(driver: WebDriver, selector: str, *needles: str) -> str:
    """Wait until the first element matching ``selector`` contains every needle; its text."""

    def check(d: WebDriver) -> str | bool:
        found = d.find_elements(By.CSS_SELECTOR, selector)
        text = found[0].text if found else ""
        return text if found and all(needle in text for needle in needles) else False

    text: str = wait_for(driver, check, f"{selector} to say {needles!r}")  # type: ignore[arg-type]
    return text


def screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    return path


# ---- driving the console -------------------------------------------------------------------


class Console:
    """The console in one browser tab: navigation, sign-in and the confirm-then-act pattern."""

    def __init__(self, driver: WebDriver, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url

    def load(self) -> None:
        self.driver.get(f"{self.base_url}/console")

    def go(self, route: str) -> None:
        """Navigate inside the page (``/fleet``, ``/banks/<id>``, ``/audit?…``)."""
        if not self.driver.current_url.startswith(f"{self.base_url}/console"):
            self.load()
        self.driver.execute_script(
            "document.getElementById('view').removeAttribute('data-route');"
            "if (location.hash === arguments[0])"
            " window.dispatchEvent(new HashChangeEvent('hashchange'));"
            "else location.hash = arguments[0];",
            f"#{route}",
        )
        wait_for(
            self.driver,
            lambda d: d.find_element(By.ID, "view").get_attribute("data-route") == route,
            f"the view of {route}",
        )

    def sign_in_with_password(self, email: str, password: str) -> None:
        for name, value in (("login-email", email), ("login-password", password)):
            element = visible(self.driver, f"#{name}")
            element.clear()
            element.send_keys(value)
        self.driver.find_element(By.CSS_SELECTOR, "#password-form button[type=submit]").click()

    def sign_in_with_token(self, token: str) -> None:
        element = visible(self.driver, "#login-token")
        element.clear()
        element.send_keys(token)
        self.driver.find_element(By.CSS_SELECTOR, "#token-form button[type=submit]").click()

    def signed_in(self) -> str:
        return text_of(self.driver, "#who", "Signed in")

    def live(self) -> None:
        text_of(self.driver, "#connection", "Live")

    def flash_seq(self) -> int:
        return int(self.driver.find_element(By.ID, "flash").get_attribute("data-seq") or 0)

    def act(
        self,
        trigger: str | WebElement,
        fields: dict[str, str | int] | None = None,
        *,
        cancel: bool = False,
    ) -> tuple[str, str]:
        """Click an action, check it asks first, fill the dialog's fields, confirm (or cancel);
        return the result line's kind (``ok``, ``error``, ``info``) and text."""
        before = self.flash_seq()

        def click(d: WebDriver) -> bool:
            element = visible(d, trigger) if isinstance(trigger, str) else trigger
            d.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
            element.click()
            return True

        wait_for(self.driver, click, f"{trigger} to be clicked")
        dialog = visible(self.driver, "dialog#confirm")
        assert dialog.get_attribute("open") is not None
        for name, value in (fields or {}).items():
            field = self.driver.find_element(By.ID, f"confirm-field-{name}")
            if field.tag_name == "select":
                from selenium.webdriver.support.select import Select

                Select(field).select_by_value(str(value))
            else:
                field.clear()
                field.send_keys(str(value))
        self.driver.find_element(By.ID, "confirm-cancel" if cancel else "confirm-ok").click()
        wait_for(self.driver, lambda d: self.flash_seq() > before, "the action's result")
        box = self.driver.find_element(By.ID, "flash")
        return box.get_attribute("data-kind") or "", box.find_element(By.ID, "flash-text").text

    def rows(self, selector: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def severe_logs(self, *allowed: str) -> list[dict[str, Any]]:
        return [
            entry
            for entry in self.driver.get_log("browser")
            if entry["level"] == "SEVERE" and not any(a in entry["message"] for a in allowed)
        ]


# ---- the shared world of the console tests ------------------------------------------------

OPERATOR_EMAIL = "operator@example.org"
OPERATOR_PASSWORD = "operator-password-1"
# Chromium logs every non-2xx fetch as SEVERE; the console shows those answers on purpose
EXPECTED_LOGS = ("Failed to load resource",)


@dataclass
class Performed:
    """An operator action the browser performed: who, and when (for the audit check)."""

    what: str
    actor: dict[str, str]
    since: datetime
    until: datetime
    bank_id: str | None = None


@dataclass
class World:
    backend: Backend
    console: Console
    operator_id: str
    bank: dict[str, Any]  # online: a simulated device answers
    offline_bank: dict[str, Any]  # no device
    performed: list[Performed] = field(default_factory=list)

    @property
    def operator(self) -> dict[str, str]:
        return {"kind": "user", "id": self.operator_id}

    def act(
        self,
        what: str,
        trigger: Any,
        fields: dict[str, str | int] | None = None,
        *,
        bank_id: str | None = None,
        actor: dict[str, str] | None = None,
    ) -> tuple[str, str]:
        """Perform an action through the page and remember it for the audit check."""
        since = datetime.now(UTC) - timedelta(milliseconds=5)
        kind, text = self.console.act(trigger, fields)
        until = datetime.now(UTC) + timedelta(milliseconds=5)
        if kind == "ok":
            self.performed.append(Performed(what, actor or self.operator, since, until, bank_id))
        return kind, text


def bank_row(driver: WebDriver, bank_id: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'#fleet-table tr[data-bank-id="{bank_id}"]')


def compartment_action(compartment_id: str, action: str) -> str:
    """The selector of one compartment's action button on a bank's page."""
    return f'#compartment-table tr[data-compartment-id="{compartment_id}"] [data-action="{action}"]'


def open_bank(world: World, bank_id: str) -> None:
    world.console.go(f"/banks/{bank_id}")
    text_of(world.console.driver, "#history-status", "events")


def history_types(driver: WebDriver) -> list[str]:
    return [
        row.get_attribute("data-type") or ""
        for row in driver.find_elements(By.CSS_SELECTOR, "#history-table tbody tr")
    ]


def fail_bank(backend: Backend, bank_id: str) -> None:
    """Drive a bank's actor past its restart budget (its store appends fail), so that the
    console's restart has something to restart."""
    from tests.faults.test_failed_banks import BrokenAppends

    async def run() -> None:
        svc = backend.svc
        assert svc is not None
        path = f"/api/admin/locker-banks/{bank_id}/provisioning-token"
        with BrokenAppends(svc, bank_id):
            while not svc.context.registry.is_failed(bank_id):
                response = await svc.http.post(path, headers=svc.admin_headers())
                assert response.status_code == 503, response.text

    backend.call(run)
