"""The console's users and groups (contract §5): edit, disable and enable, delete a user; create
a group and manage its members; grant a compartment to a user or a group and revoke it, from a
bank's page and from the users view. Each action confirms and shows the result."""

from __future__ import annotations

from typing import Any

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.lockerd.console.harness import (
    OPERATOR_EMAIL,
    World,
    compartment_action,
    open_bank,
    screenshot,
    text_of,
    wait_for,
)


def user_row(email: str) -> str:
    return f'#user-table tr[data-email="{email}"]'


def group_row(name: str) -> str:
    return f'#group-table tr[data-name="{name}"]'


def members(driver: WebDriver, name: str) -> list[str]:
    return [
        item.get_attribute("data-user-id") or ""
        for item in driver.find_elements(By.CSS_SELECTOR, f"{group_row(name)} li.kv")
    ]


def grants(driver: WebDriver) -> list[dict[str, str]]:
    return [
        {
            "user": row.get_attribute("data-user-id") or "",
            "group": row.get_attribute("data-group-id") or "",
            "text": row.text,
        }
        for row in driver.find_elements(By.CSS_SELECTOR, "#grant-table tbody tr")
    ]


def login(world: World, email: str, password: str) -> str:
    response = world.backend.http.post("/api/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def me_status(world: World, token: str) -> int:
    response = world.backend.http.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    return response.status_code


def test_edit_a_user(world: World) -> None:
    driver = world.console.driver
    world.backend.create_user("bob@example.org", "bob-password-1", name="Bob")
    world.console.go("/people")
    kind, text = world.act(
        "edit user",
        f'{user_row("bob@example.org")} [data-action="edit-user"]',
        {"name": "Robert Builder", "role": "admin"},
    )
    assert (kind, text) == ("ok", "User bob@example.org saved."), text
    text_of(driver, user_row("bob@example.org"), "Robert Builder", "admin")
    screenshot(driver, "users.png")


def test_disable_a_user_ends_their_sessions_and_enable_them_again(world: World) -> None:
    driver = world.console.driver
    world.backend.create_user("erin@example.org", "erin-password-1", name="Erin")
    token = login(world, "erin@example.org", "erin-password-1")
    assert me_status(world, token) == 200
    world.console.go("/people")
    kind, text = world.act(
        "disable user", f'{user_row("erin@example.org")} [data-action="disable-user"]'
    )
    assert (kind, text) == ("ok", "User erin@example.org disabled."), text
    text_of(driver, user_row("erin@example.org"), "disabled")
    assert me_status(world, token) == 401
    kind, text = world.act(
        "enable user", f'{user_row("erin@example.org")} [data-action="disable-user"]'
    )
    assert (kind, text) == ("ok", "User erin@example.org enabled."), text
    text_of(driver, user_row("erin@example.org"), "active")
    assert me_status(world, login(world, "erin@example.org", "erin-password-1")) == 200


def test_delete_a_user(world: World) -> None:
    driver = world.console.driver
    world.backend.create_user("carol@example.org", "carol-password-1", name="Carol")
    world.console.go("/people")
    kind, text = world.act(
        "delete user", f'{user_row("carol@example.org")} [data-action="delete-user"]'
    )
    assert (kind, text) == ("ok", "User carol@example.org deleted."), text
    wait_for(
        driver,
        lambda d: not d.find_elements(By.CSS_SELECTOR, user_row("carol@example.org")),
        "carol gone",
    )
    emails = [user["email"] for user in world.backend.admin("GET", "/api/admin/users")]
    assert "carol@example.org" not in emails


def test_create_a_group_add_and_remove_members(world: World) -> None:
    driver = world.console.driver
    dora = world.backend.create_user("dora@example.org", "dora-password-1", name="Dora")
    world.console.go("/people")
    kind, text = world.act("create group", '[data-action="new-group"]', {"name": "Caretakers"})
    assert kind == "ok" and text.startswith("Group Caretakers created"), text
    kind, text = world.act(
        "add member", f'{group_row("Caretakers")} [data-action="add-member"]', {"user_id": dora}
    )
    assert (kind, text) == ("ok", "dora@example.org added to Caretakers."), text
    wait_for(driver, lambda d: members(d, "Caretakers") == [dora], "dora a member")
    text_of(driver, group_row("Caretakers"), "dora@example.org")
    screenshot(driver, "groups.png")
    kind, text = world.act(
        "remove member", f'{group_row("Caretakers")} li.kv [data-action="remove-member"]'
    )
    assert (kind, text) == ("ok", "dora@example.org removed from Caretakers."), text
    wait_for(driver, lambda d: members(d, "Caretakers") == [], "no members")
    kind, text = world.act(
        "add member again",
        f'{group_row("Caretakers")} [data-action="add-member"]',
        {"user_id": dora},
    )
    assert kind == "ok", text


def group_id(world: World, name: str) -> str:
    found: list[dict[str, Any]] = [
        g for g in world.backend.admin("GET", "/api/admin/groups") if g["name"] == name
    ]
    return str(found[0]["id"])


def user_id(world: World, email: str) -> str:
    found = [u for u in world.backend.admin("GET", "/api/admin/users") if u["email"] == email]
    return str(found[0]["id"])


def test_grant_and_revoke_a_compartment_to_a_user_and_a_group(world: World) -> None:
    driver = world.console.driver
    dora = user_id(world, "dora@example.org")
    caretakers = group_id(world, "Caretakers")
    compartment = world.bank["compartments"][2]
    open_bank(world, world.bank["id"])
    driver.find_element(By.CSS_SELECTOR, compartment_action(compartment["id"], "grants")).click()
    text_of(driver, "#grants", "Grants of compartment 3")
    kind, text = world.act(
        "grant to user",
        '#grants [data-action="grant"]',
        {"target": f"user:{dora}"},
        bank_id=world.bank["id"],
    )
    assert (kind, text) == ("ok", "Granted compartment 3 to dora@example.org."), text
    kind, text = world.act(
        "grant to group",
        '#grants [data-action="grant"]',
        {"target": f"group:{caretakers}"},
        bank_id=world.bank["id"],
    )
    assert (kind, text) == ("ok", "Granted compartment 3 to group Caretakers."), text
    wait_for(
        driver,
        lambda d: (
            sorted((g["user"], g["group"]) for g in grants(d))
            == sorted([(dora, ""), ("", caretakers)])
        ),
        "both grants listed",
    )
    assert all(OPERATOR_EMAIL in g["text"] for g in grants(driver)), grants(driver)
    screenshot(driver, "grants.png")
    listed = world.backend.admin("GET", f"/api/admin/compartments/{compartment['id']}/grants")
    assert {(g.get("user_id"), g.get("group_id")) for g in listed} == {
        (dora, None),
        (None, caretakers),
    }
    kind, text = world.act(
        "revoke from user",
        f'#grant-table tr[data-user-id="{dora}"] [data-action="revoke"]',
        bank_id=world.bank["id"],
    )
    assert (kind, text) == ("ok", "Grant of dora@example.org to compartment 3 revoked."), text
    kind, text = world.act(
        "revoke from group",
        f'#grant-table tr[data-group-id="{caretakers}"] [data-action="revoke"]',
        bank_id=world.bank["id"],
    )
    assert (kind, text) == ("ok", "Grant of group Caretakers to compartment 3 revoked."), text
    wait_for(driver, lambda d: grants(d) == [], "no grants left")
    assert world.backend.admin("GET", f"/api/admin/compartments/{compartment['id']}/grants") == []


def test_grant_from_the_users_view(world: World) -> None:
    dora = user_id(world, "dora@example.org")
    compartment = world.bank["compartments"][0]
    world.console.go("/people")
    kind, text = world.act(
        "grant from the users view",
        f'{user_row("dora@example.org")} [data-action="grant-user"]',
        {"compartment": compartment["id"]},
        bank_id=world.bank["id"],
    )
    assert (kind, text) == ("ok", "Granted Central Station · No. 1 to dora@example.org."), text
    listed = world.backend.admin("GET", f"/api/admin/compartments/{compartment['id']}/grants")
    assert [g.get("user_id") for g in listed] == [dora]
