"""The console's bank actions (contract §5): open with a reason, out of service, apply config,
a new provisioning token, restart a failed bank actor, decommission, edit the bank, add and
retire a compartment. Each test clicks the action, checks that the console asks first,
confirms, and reads the result line (or the server's refusal); test_console_audit.py then
finds every one of them in the audit log with its actor. Screenshots go to
test-artifacts/console/.
"""

from __future__ import annotations

from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.lockerd.console.harness import (
    World,
    bank_row,
    compartment_action,
    fail_bank,
    history_types,
    open_bank,
    read,
    screenshot,
    text_of,
    wait_for,
)
from tests.support.service import ADMIN_TOKEN


@pytest.fixture(scope="module")
def pier(world: World) -> dict[str, Any]:
    """A bank of this module's own, online (a simulated device answers), for the changes
    that would disturb the shared bank (a new name, compartments added and retired)."""
    bank = world.backend.create_bank("North Pier", 2, location="Quay 1")
    world.backend.start_device(bank["id"])
    return bank


def compartment_rows(driver: WebDriver) -> list[dict[str, str]]:
    return [
        {
            "number": row.get_attribute("data-number") or "",
            "out_of_service": row.get_attribute("data-out-of-service") or "",
        }
        for row in driver.find_elements(By.CSS_SELECTOR, "#compartment-table tbody tr")
    ]


def flash_says(driver: WebDriver, *needles: str) -> str:
    return text_of(driver, "#flash-text", *needles)


def test_open_a_compartment_with_a_reason(world: World) -> None:
    driver = world.console.driver
    compartment = world.bank["compartments"][0]
    open_bank(world, world.bank["id"])
    kind, text = world.act(
        "operator open",
        compartment_action(compartment["id"], "open"),
        {"reason": "parcel stuck in the door"},
        bank_id=world.bank["id"],
    )
    assert kind == "ok", text
    # first "open requested (pending)", then (it follows the transaction) how it ended: the
    # device answers at once, so the result line may already show the end
    assert text.startswith("Compartment 1 of Central Station: open"), text
    flash_says(driver, "Compartment 1 of Central Station: open: success")
    wait_for(driver, lambda d: "CompartmentOpened" in history_types(d), "the opened event")
    requested = [
        ev
        for ev in world.backend.admin("GET", f"/api/admin/locker-banks/{world.bank['id']}/events")
        if ev["type"] == "CompartmentOpeningRequested" and ev["data"].get("via") == "operator"
    ]
    assert requested[-1]["data"]["reason"] == "parcel stuck in the door"
    assert requested[-1]["data"]["actor"] == world.operator
    driver.execute_script("window.scrollTo(0, 0)")  # the result line, above the bank
    screenshot(driver, "open.png")


def test_out_of_service_refuses_an_open_until_back_in_service(world: World) -> None:
    driver = world.console.driver
    compartment = world.bank["compartments"][1]
    open_bank(world, world.bank["id"])
    kind, text = world.act(
        "out of service",
        compartment_action(compartment["id"], "out-of-service"),
        bank_id=world.bank["id"],
    )
    assert (kind, text) == ("ok", "Compartment 2 is out of service."), text
    wait_for(
        driver,
        lambda d: {"number": "2", "out_of_service": "true"} in compartment_rows(d),
        "compartment 2 out of service",
    )
    text_of(driver, '#compartment-table tr[data-number="2"]', "out of service")
    # an open is refused by the server, and the console shows its message and reason
    kind, text = world.act(
        "refused open",
        compartment_action(compartment["id"], "open"),
        {"reason": "check"},
        bank_id=world.bank["id"],
    )
    assert kind == "error"
    assert "the compartment is out of service (HTTP 409, out_of_service)" in text
    driver.execute_script("window.scrollTo(0, 0)")
    screenshot(driver, "out-of-service.png")
    kind, text = world.act(
        "back in service",
        compartment_action(compartment["id"], "out-of-service"),
        bank_id=world.bank["id"],
    )
    assert (kind, text) == ("ok", "Compartment 2 is back in service."), text
    wait_for(
        driver,
        lambda d: {"number": "2", "out_of_service": "false"} in compartment_rows(d),
        "compartment 2 back in service",
    )


def test_apply_config(world: World) -> None:
    driver = world.console.driver
    open_bank(world, world.bank["id"])
    # the bank applied its configuration when it first came online (contract §2)
    applied = read(driver, history_types, "the history").count("ConfigApplied")
    assert applied >= 1
    kind, text = world.act("apply config", '[data-action="apply-config"]', bank_id=world.bank["id"])
    assert kind == "ok", text
    assert "Configuration sent; transaction" in text
    transaction = text.rsplit(" ", 1)[-1].rstrip(".")
    answer = world.backend.admin("GET", f"/api/transactions/{transaction}?wait=30")
    assert answer["status"] == "success"
    wait_for(
        driver,
        lambda d: history_types(d).count("ConfigApplied") == applied + 1,
        "the configuration applied once more",
    )
    facts = text_of(driver, "#bank-facts", "applied")
    assert "not applied yet" not in facts, facts


def test_new_provisioning_token(world: World) -> None:
    open_bank(world, world.offline_bank["id"])
    kind, text = world.act(
        "provisioning token",
        '[data-action="provisioning-token"]',
        bank_id=world.offline_bank["id"],
    )
    assert kind == "ok", text
    token = text.removeprefix("New provisioning token: ")
    assert token and token != world.offline_bank["provisioning_token"]
    screenshot(world.console.driver, "provisioning-token.png")


def test_edit_the_bank(world: World, pier: dict[str, Any]) -> None:
    driver = world.console.driver
    open_bank(world, pier["id"])
    # the creation's configuration
    applied = read(driver, history_types, "the history").count("ConfigApplied")
    assert applied >= 1
    kind, text = world.act(
        "edit bank",
        '[data-action="edit-bank"]',
        {"name": "North Pier East", "location": "Quay 2", "heartbeat_interval_seconds": 5},
        bank_id=pier["id"],
    )
    assert (kind, text) == ("ok", "Bank saved: North Pier East."), text
    text_of(driver, "#bank-title", "North Pier East")
    text_of(driver, "#bank-facts", "Quay 2", "every 5 s")
    # a new heartbeat interval is a new configuration: the bank sends it by itself
    wait_for(driver, lambda d: "LockerBankEdited" in history_types(d), "the edit in the history")
    wait_for(
        driver,
        lambda d: history_types(d).count("ConfigApplied") == applied + 1,
        "the new config applied",
    )


def test_add_a_compartment(world: World, pier: dict[str, Any]) -> None:
    driver = world.console.driver
    open_bank(world, pier["id"])
    kind, text = world.act(
        "add compartment",
        '[data-action="add-compartment"]',
        {"number": 3, "slave_id": 2, "address": 7},
        bank_id=pier["id"],
    )
    assert (kind, text) == ("ok", "Compartment 3 added."), text
    wait_for(driver, lambda d: len(compartment_rows(d)) == 3, "3 compartments")
    text_of(driver, '#compartment-table tr[data-number="3"]', "slave 2 · addr 7")
    # the number is taken now: the server's refusal is shown
    kind, text = world.console.act(
        '[data-action="add-compartment"]', {"number": 3, "slave_id": 5, "address": 5}
    )
    assert kind == "error"
    assert "compartment 3 exists already (HTTP 409, conflict)" in text


def test_retire_a_compartment(world: World, pier: dict[str, Any]) -> None:
    driver = world.console.driver
    open_bank(world, pier["id"])
    row = driver.find_element(By.CSS_SELECTOR, '#compartment-table tr[data-number="3"]')
    compartment_id = row.get_attribute("data-compartment-id") or ""
    kind, text = world.act(
        "retire compartment", compartment_action(compartment_id, "retire"), bank_id=pier["id"]
    )
    assert (kind, text) == ("ok", "Compartment 3 retired."), text
    wait_for(driver, lambda d: len(compartment_rows(d)) == 2, "2 compartments")
    wait_for(driver, lambda d: "CompartmentRetired" in history_types(d), "the retirement")


def test_decommission(world: World, pier: dict[str, Any]) -> None:
    driver = world.console.driver
    open_bank(world, pier["id"])
    kind, text = world.act("decommission", '[data-action="decommission"]', bank_id=pier["id"])
    assert (kind, text) == ("ok", "Bank decommissioned: North Pier East."), text
    text_of(driver, "#bank-facts", "decommissioned")
    wait_for(
        driver, lambda d: "LockerBankDecommissioned" in history_types(d), "the decommissioning"
    )
    # the page offers no action any more, says why, and keeps the grants and the history
    text_of(driver, "#decommissioned-note", "nothing can be done with it any more")
    compartment = pier["compartments"][0]
    wait_for(
        driver,
        lambda d: (
            not d.find_elements(By.CSS_SELECTOR, '[data-action="decommission"]')
            and not any(
                button.is_displayed()
                for button in d.find_elements(By.CSS_SELECTOR, '[data-action="add-compartment"]')
            )
            and not d.find_elements(By.CSS_SELECTOR, compartment_action(compartment["id"], "open"))
            and d.find_elements(By.CSS_SELECTOR, compartment_action(compartment["id"], "grants"))
        ),
        "only the grants left as an action",
    )
    # and the server refuses every open with its reason (what the buttons would have met)
    refused = world.backend.http.post(
        f"/api/admin/compartments/{compartment['id']}/open",
        json={"reason": "check"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert refused.status_code == 409, refused.text
    assert refused.json()["reason"] == "decommissioned"
    screenshot(driver, "decommissioned.png")
    bank = world.backend.admin("GET", f"/api/admin/locker-banks/{pier['id']}")
    assert bank["decommissioned"] is True
    # the live fleet marks it too
    world.console.go("/fleet")
    wait_for(
        driver,
        lambda d: bank_row(d, pier["id"]).get_attribute("data-decommissioned") == "true",
        "the fleet row marked decommissioned",
    )
    text_of(driver, f'#fleet-table tr[data-bank-id="{pier["id"]}"]', "decommissioned")


def test_restart_a_failed_bank(world: World) -> None:
    driver = world.console.driver
    depot = world.backend.create_bank("Depot", 1, location="Yard")
    fail_bank(world.backend, depot["id"])
    open_bank(world, depot["id"])
    text_of(driver, "#bank-facts", "failed")
    screenshot(driver, "failed.png")
    kind, text = world.act("restart", '[data-action="restart"]', bank_id=depot["id"])
    assert (kind, text) == ("ok", "Restart requested."), text
    text_of(driver, "#bank-facts", "running")
    wait_for(driver, lambda d: "BankActorRestarted" in history_types(d), "the restart recorded")
    # running now: a second restart is refused, and the console shows why
    kind, text = world.console.act('[data-action="restart"]')
    assert kind == "error"
    assert "(HTTP 409, not_failed)" in text
