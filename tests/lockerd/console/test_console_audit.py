"""The console's audit log (contract §5): an action made with the admin token, and the log's
filters (actor, bank, type, since/until, limit). conftest.py runs this module last."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select

from tests.lockerd.console.harness import (
    OPERATOR_EMAIL,
    OPERATOR_PASSWORD,
    World,
    open_bank,
    screenshot,
    text_of,
    wait_for,
)
from tests.support.service import ADMIN_TOKEN


def audit_rows(world: World) -> list[dict[str, str]]:
    return [
        {
            "type": row.get_attribute("data-type") or "",
            "actor": row.get_attribute("data-actor") or "",
            "text": row.text,
        }
        for row in world.console.driver.find_elements(By.CSS_SELECTOR, "#audit-table tbody tr")
    ]


def test_an_action_with_the_admin_token(world: World) -> None:
    console, driver = world.console, world.console.driver
    driver.find_element(By.ID, "sign-out").click()
    console.sign_in_with_token(ADMIN_TOKEN)
    console.live()
    open_bank(world, world.bank["id"])
    kind, text = world.act(
        "apply config with the admin token",
        '[data-action="apply-config"]',
        bank_id=world.bank["id"],
        actor={"kind": "admin_token"},
    )
    assert kind == "ok", text
    driver.find_element(By.ID, "sign-out").click()
    console.sign_in_with_password(OPERATOR_EMAIL, OPERATOR_PASSWORD)
    console.live()


def test_every_action_the_browser_performed_is_in_the_audit_log_with_its_actor(
    world: World,
) -> None:
    """Every action of the console tests that succeeded (``World.performed``) left an audit
    entry in its time window, naming who performed it."""
    assert len(world.performed) >= 10, [p.what for p in world.performed]
    missing = []
    for performed in world.performed:
        params = {
            "since": performed.since.isoformat(),
            "until": performed.until.isoformat(),
            "limit": "50",
        }
        if performed.bank_id is not None:
            params["bank_id"] = performed.bank_id
        response = world.backend.http.get(
            "/api/admin/audit",
            params=params,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert response.status_code == 200, response.text
        if not any(entry["actor"] == performed.actor for entry in response.json()):
            missing.append(performed.what)
    assert missing == [], f"no audit entry with the actor for {missing}"


def test_the_audit_log_with_filters(world: World) -> None:
    driver = world.console.driver
    world.console.go("/audit")
    text_of(driver, "#audit-status", "newest first")
    every = audit_rows(world)
    assert {"LockerBankCreated", "UserCreated"} <= {row["type"] for row in every}, every
    screenshot(driver, "audit.png")

    # by actor and bank, through the form
    Select(driver.find_element(By.ID, "audit-actor_id")).select_by_value(world.operator_id)
    Select(driver.find_element(By.ID, "audit-bank_id")).select_by_value(world.bank["id"])
    driver.find_element(By.ID, "audit-apply").click()
    wait_for(
        driver,
        lambda d: "actor_id=" in (d.find_element(By.ID, "view").get_attribute("data-route") or ""),
        "the filtered view",
    )
    text_of(driver, "#audit-status", "newest first")
    mine = audit_rows(world)
    assert mine, "the operator's actions on the bank"
    assert all(json.loads(row["actor"]) == world.operator for row in mine), mine
    assert all("Central Station" in row["text"] for row in mine), mine
    assert all(OPERATOR_EMAIL in row["text"] for row in mine), mine
    screenshot(driver, "audit-filtered.png")

    # by type
    world.console.go("/audit?type=UserCreated")
    text_of(driver, "#audit-status", "newest first")
    assert {row["type"] for row in audit_rows(world)} == {"UserCreated"}
    assert driver.find_element(By.ID, "audit-type").get_attribute("value") == "UserCreated"

    # by time: nothing after tomorrow, everything since yesterday
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    world.console.go(f"/audit?since={tomorrow}")
    text_of(driver, "#audit-list", "Nothing matches these filters.")
    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    world.console.go(f"/audit?since={yesterday}&until={tomorrow}&limit=5")
    text_of(driver, "#audit-status", "5 entries")
