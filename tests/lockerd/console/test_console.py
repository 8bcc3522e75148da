"""The operators' console (``GET /console``) end to end: a real lockerd, a real Mosquitto,
simulated devices that answer commands, and headless Chromium driving the page.

One service and one browser serve every console test module (harness.py, conftest.py); each
test sets up what it needs and performs one action through the page: it clicks, checks that the
console asks first, confirms, and reads the result line. Every operator action is remembered
(``World.performed``) with the time window it happened in and who did it, for the audit check.
Screenshots go to test-artifacts/console/.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.lockerd.console.harness import (
    DESKTOP,
    EXPECTED_LOGS,
    OPERATOR_EMAIL,
    OPERATOR_PASSWORD,
    PHONE,
    Backend,
    Console,
    World,
    bank_row,
    history_types,
    open_bank,
    read,
    screenshot,
    text_of,
    wait_for,
)
from tests.support.service import ADMIN_TOKEN

# ---- signing in and out ----------------------------------------------------------------------


def test_sign_in_refuses_wrong_passwords_non_admins_and_bad_tokens(
    backend: Backend, driver: WebDriver
) -> None:
    backend.create_user("citizen@example.org", "citizen-password", role="user")
    console = Console(driver, backend.base_url)
    console.load()
    if driver.find_elements(By.CSS_SELECTOR, "#sign-out:not([hidden])"):
        driver.find_element(By.ID, "sign-out").click()
    console.sign_in_with_password(OPERATOR_EMAIL, "wrong password")
    text_of(driver, "#login-error", "Wrong email or password")
    console.sign_in_with_password("citizen@example.org", "citizen-password")
    text_of(driver, "#login-error", "not an administrator")
    console.sign_in_with_token("not-the-token")
    text_of(driver, "#login-error", "not accepted")
    screenshot(driver, "sign-in.png")
    assert driver.execute_script("return sessionStorage.length") == 0


def test_sign_in_with_the_token_then_sign_out_and_in_with_a_password(world: World) -> None:
    console, driver = world.console, world.console.driver
    driver.find_element(By.ID, "sign-out").click()
    text_of(driver, "#login-error", "Signed out")
    assert driver.execute_script("return sessionStorage.getItem('lockerd.console.token')") is None
    console.sign_in_with_token(ADMIN_TOKEN)
    assert "admin token" in console.signed_in()
    assert (
        driver.execute_script("return sessionStorage.getItem('lockerd.console.token')")
        == ADMIN_TOKEN
    )
    console.live()
    driver.find_element(By.ID, "sign-out").click()
    console.sign_in_with_password(OPERATOR_EMAIL, OPERATOR_PASSWORD)
    assert OPERATOR_EMAIL in console.signed_in()
    console.live()


# ---- the fleet -------------------------------------------------------------------------------


def test_the_fleet_is_live(world: World) -> None:
    console, driver = world.console, world.console.driver
    console.go("/fleet")
    wait_for(
        driver,
        lambda d: bank_row(d, world.bank["id"]).get_attribute("data-presence") == "online",
        "the bank with a device online",
    )
    text_of(driver, "#summary", "online")
    assert bank_row(driver, world.offline_bank["id"]).get_attribute("data-presence") == "unknown"
    screenshot(driver, "fleet.png")


def test_create_a_bank(world: World) -> None:
    driver = world.console.driver
    world.console.go("/fleet")
    kind, text = world.act(
        "create bank",
        "#new-bank",
        {"name": "Old Town", "location": "Market square", "compartments": 4},
    )
    assert kind == "ok", text
    assert "provisioning token" in text
    text_of(driver, "#bank-title", "Old Town")
    wait_for(
        driver,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#compartment-table tbody tr")) == 4,
        "4 compartments",
    )


# ---- a bank's page ---------------------------------------------------------------------------


def test_a_banks_page_shows_compartments_and_a_readable_history(world: World) -> None:
    driver = world.console.driver
    open_bank(world, world.bank["id"])
    text_of(driver, "#bank-facts", "online", "Hall B")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#compartment-table tbody tr")) == 3
    wait_for(driver, lambda d: "LockerBankCameOnline" in history_types(d), "the online event")
    assert "LockerBankCreated" in read(driver, history_types, "the history")
    # details are key/value chips: none breaks across lines, at desktop or phone width
    for size in (DESKTOP, PHONE):
        driver.set_window_size(*size)
        heights = driver.execute_script(
            "return [...document.querySelectorAll('#history-table .kv')].map((e) => "
            "[e.getClientRects().length, e.getBoundingClientRect().height, "
            "parseFloat(getComputedStyle(e).lineHeight) || 20])"
        )
        assert heights, "no details shown"
        assert all(rects == 1 and height < 2 * line for rects, height, line in heights), heights
    screenshot(driver, "bank-phone.png")
    driver.set_window_size(*DESKTOP)
    screenshot(driver, "bank.png")
    driver.execute_script("document.getElementById('history-title').scrollIntoView()")
    screenshot(driver, "history.png")


def test_cancelling_an_action_changes_nothing(world: World) -> None:
    driver = world.console.driver
    open_bank(world, world.bank["id"])
    before = len(read(driver, history_types, "the history"))
    kind, text = world.console.act('[data-action="apply-config"]', cancel=True)
    assert (kind, text) == ("info", "Apply configuration: cancelled.")
    events = world.backend.admin("GET", f"/api/admin/locker-banks/{world.bank['id']}/events")
    assert len(events) == before


# ---- people ----------------------------------------------------------------------------------


def test_create_a_user_and_see_the_servers_refusal_of_a_second_one(world: World) -> None:
    world.console.go("/people")
    fields: dict[str, str | int] = {
        "email": "alice@example.org",
        "name": "Alice",
        "password": "alice-password-1",
    }
    kind, text = world.act("create user", '[data-action="new-user"]', fields)
    assert kind == "ok", text
    assert "User alice@example.org created" in text
    kind, text = world.console.act('[data-action="new-user"]', fields)
    assert kind == "error"
    assert "New user failed:" in text and "HTTP 409" in text


# ---- metrics ---------------------------------------------------------------------------------


def test_tenant_and_agent_then_a_metrics_chart(world: World) -> None:
    driver = world.console.driver
    world.console.go("/metrics")
    kind, text = world.act("create tenant", '[data-action="new-tenant"]', {"name": "Parks"})
    assert kind == "ok", text
    tenant_id = text.rsplit("id ", 1)[1].rstrip(").")
    wait_for(
        driver,
        lambda d: d.find_element(By.ID, "tenant").get_attribute("value") == tenant_id,
        "the tenant chosen",
    )
    kind, text = world.act("create agent", '[data-action="new-agent"]', {"name": "weather"})
    assert kind == "ok", text
    user = text.split("MQTT user ", 1)[1].split(",", 1)[0]
    password = text.split("password ", 1)[1]
    wait_for(
        driver,
        lambda d: d.find_element(By.ID, "stream-status").get_attribute("data-state") == "live",
        "the live stream",
    )

    def points(d: WebDriver) -> dict[str, str]:
        return {
            c.get_attribute("data-metric") or "": c.get_attribute("data-points") or ""
            for c in d.find_elements(By.CSS_SELECTOR, "#charts .chart")
        }

    # points arrive live (the stream), one chart per agent and metric
    start = datetime.now(UTC) - timedelta(minutes=5)
    readings = [
        ("temperature", 12.5),
        ("humidity", 61.0),
        ("temperature", 14.0),
        ("humidity", 64.5),
        ("temperature", 13.25),
    ]
    for n, (metric, value) in enumerate(readings):
        stamp = (start + timedelta(seconds=30 * n)).isoformat().replace("+00:00", "Z")
        response = world.backend.http.post(
            "/api/metrics",
            json={"metric": metric, "value": value, "timestamp": stamp},
            auth=(user, password),
        )
        assert response.status_code == 202, response.text
    wait_for(driver, lambda d: points(d) == {"temperature": "3", "humidity": "2"}, "live charts")
    last = driver.find_element(By.CSS_SELECTOR, '#charts .chart[data-metric="temperature"]')
    assert last.get_attribute("data-last") == "13.25"
    # opened again later, the charts start from the stored points
    world.console.go("/fleet")
    world.console.go(f"/metrics?tenant={tenant_id}")
    wait_for(driver, lambda d: points(d) == {"temperature": "3", "humidity": "2"}, "stored points")
    screenshot(driver, "metrics.png")


# ---- phone width, and nothing went wrong in the page ----------------------------------------


def test_every_view_at_phone_width(world: World) -> None:
    driver = world.console.driver
    driver.set_window_size(*PHONE)
    try:
        for route, name in (
            ("/fleet", "fleet"),
            (f"/banks/{world.bank['id']}", "bank"),
            ("/people", "people"),
            ("/alerts", "alerts"),
            ("/audit", "audit"),
            ("/metrics", "metrics"),
        ):
            world.console.go(route)
            width = driver.execute_script("return document.documentElement.scrollWidth")
            assert width <= PHONE[0] + 1, f"{route} is {width} px wide at phone width"
            screenshot(driver, f"{name}-phone.png")
    finally:
        driver.set_window_size(*DESKTOP)
    assert world.console.severe_logs(*EXPECTED_LOGS) == []
