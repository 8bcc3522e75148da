"""The console's alerts (contract §5): alerts raised by a simulated device (a door that opened
by itself, a ``DOOR_JAMMED`` answer) appear live, one is acknowledged with confirmation and a
result message, and the audit log then names the acknowledging operator."""

from __future__ import annotations

import json
from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.lockerd.console.harness import World, read, screenshot, text_of, wait_for
from tests.support.device import Answer

PASSWORD = "a-citizen-password"


def alert_rows(driver: WebDriver) -> list[dict[str, str]]:
    return [
        {
            "id": row.get_attribute("data-alert-id") or "",
            "type": row.get_attribute("data-type") or "",
            "state": row.get_attribute("data-state") or "",
            "text": row.text,
        }
        for row in driver.find_elements(By.CSS_SELECTOR, "#alert-table tbody tr")
    ]


def rows_of_bank(driver: WebDriver, bank: str) -> list[dict[str, str]]:
    return [row for row in alert_rows(driver) if bank in row["text"]]


def museum_rows(driver: WebDriver) -> list[dict[str, str]]:
    return rows_of_bank(driver, "Museum")


def test_device_alerts_appear_live_and_are_acknowledged(world: World) -> None:
    backend, console, driver = world.backend, world.console, world.console.driver
    bank: dict[str, Any] = backend.create_bank("Museum", 2, location="Foyer")
    bank_id = bank["id"]
    first = bank["compartments"][0]["id"]
    dev = backend.start_device(bank_id)
    dev.answers["open_compartment"] = Answer(result="error", error_code="DOOR_JAMMED")

    console.go("/alerts?state=open")
    text_of(driver, "#alert-list", "")
    # the device reports a door that opened without a command: the list follows by itself
    backend.call(dev.event, "door_state_changed", {"compartment_number": 2, "state": "open"})
    wait_for(driver, lambda d: len(rows_of_bank(d, "Museum")) == 1, "the door alert, live")
    # a citizen's open that the device answers DOOR_JAMMED
    user_id = backend.create_user("museum-visitor@example.org", PASSWORD)
    backend.admin("POST", f"/api/admin/compartments/{first}/grants", {"user_id": user_id})
    login = backend.http.post(
        "/api/login", json={"email": "museum-visitor@example.org", "password": PASSWORD}
    )
    token = login.json()["token"]
    opened = backend.http.post(
        f"/api/compartments/{first}/open", headers={"Authorization": f"Bearer {token}"}
    )
    assert opened.status_code == 202, opened.text
    wait_for(driver, lambda d: len(rows_of_bank(d, "Museum")) == 2, "the jammed alert, live")
    jammed, door = read(driver, museum_rows, "the Museum alerts")  # newest first
    assert (jammed["type"], jammed["state"]) == ("command_failed", "open")
    assert "DOOR_JAMMED" in jammed["text"]
    assert (door["type"], door["state"]) == ("uncommanded_door_opening", "open")
    count = driver.find_element(By.ID, "alert-count")

    def counts_the_open_alerts(d: WebDriver) -> bool:
        open_now = backend.admin("GET", "/api/admin/alerts?state=open")
        return count.text == str(len(open_now))

    wait_for(driver, counts_the_open_alerts, "the open count")
    assert int(count.text) >= 2
    screenshot(driver, "alerts.png")

    kind, text = world.act(
        "acknowledge an alert",
        f'#alert-table tr[data-alert-id="{jammed["id"]}"] [data-action="acknowledge"]',
        bank_id=bank_id,
    )
    assert kind == "ok", text
    assert text == "Alert command_failed acknowledged."
    wait_for(
        driver,
        lambda d: [row["id"] for row in rows_of_bank(d, "Museum")] == [door["id"]],
        "the acknowledged alert to leave the open list",
    )
    wait_for(driver, counts_the_open_alerts, "the open count to follow")

    console.go("/alerts?state=acknowledged")
    wait_for(
        driver,
        lambda d: [row["id"] for row in rows_of_bank(d, "Museum")] == [jammed["id"]],
        "the acknowledged alert",
    )
    (shown,) = read(driver, museum_rows, "the Museum alerts")
    assert shown["state"] == "acknowledged"
    assert not driver.find_elements(
        By.CSS_SELECTOR, f'#alert-table tr[data-alert-id="{jammed["id"]}"] button'
    )  # nothing left to acknowledge
    screenshot(driver, "alerts-acknowledged.png")

    # the audit log names the operator who acknowledged it
    console.go(f"/audit?type=AlertAcknowledged&bank_id={bank_id}")
    text_of(driver, "#audit-status", "newest first")
    (entry,) = driver.find_elements(By.CSS_SELECTOR, "#audit-table tbody tr")
    assert entry.get_attribute("data-type") == "AlertAcknowledged"
    assert json.loads(entry.get_attribute("data-actor") or "null") == world.operator
    assert "Museum" in entry.text
    backend.stop_device(bank_id)
