"""Revocation holds with a caching broker (contract §2, last rules; issue 13, finding 3).

go-auth may serve cached allows to revoked credentials for up to its cache time (plus jitter).
MQTT 3.1.1 cannot tell which session published, so after a re-provisioning lockerd opens a
*revocation window* (cache + jitter + margin, docs/broker-auth.md): it publishes no command
to the bank (opens are refused ``revocation_pending``) and applies nothing published on the
bank's topics (dropped ``revoked_session``). After the window the broker asks lockerd again,
and lockerd denies the old credentials: the old session's publishes are not delivered, it
receives no command, and it cannot log in again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import trio

from gateway.mqtt import ConnectionRefusedByBroker, open_mqtt_client
from tests.broker._push import until_configured
from tests.broker._stack import (
    Broker,
    lockerd_at,
    provision,
    start_broker,
    wait_for_plugin_log,
)
from tests.support.device import client_settings, device
from tests.support.fixtures import ComposeBrokerFactory, GoAuthBrokerFactory
from tests.support.users import App

CACHE_SECONDS = 2  # revocation window: 2 s + 0 s jitter + 2 s margin


def start(
    cache_seconds: int,
    compose_broker_factory: ComposeBrokerFactory,
    goauth_broker_factory: GoAuthBrokerFactory,
) -> Broker:
    return start_broker(
        "compose",
        compose_broker_factory=compose_broker_factory,
        goauth_broker_factory=goauth_broker_factory,
        cache_seconds=cache_seconds,
    )


def dropped(app: App, reason: str) -> float:
    value = app.context.metrics.registry.get_sample_value(
        "lockerd_dropped_messages_total", {"kind": "state", "reason": reason}
    )
    return value or 0.0


async def until_dropped(app: App, reason: str, count: int) -> None:
    async def check() -> bool:
        return dropped(app, reason) >= count

    await app.wait_until(check, what=f"{count} state message(s) dropped {reason}")


async def rotate(app: App, bank_id: str) -> str:
    response = await app.admin_post(f"/api/admin/locker-banks/{bank_id}/provisioning-token")
    assert response.status_code == 200, response.text
    token: str = response.json()["provisioning_token"]
    return token


async def test_revoked_credentials_get_nothing_and_change_nothing_while_the_broker_caches(
    tmp_path: Path,
    compose_broker_factory: ComposeBrokerFactory,
    goauth_broker_factory: GoAuthBrokerFactory,
) -> None:
    broker = start(CACHE_SECONDS, compose_broker_factory, goauth_broker_factory)
    async with lockerd_at(broker, tmp_path / "l.db") as app:
        bank = await app.create_bank(heartbeat_interval_seconds=3600)
        bank_id, compartment = bank["id"], bank["compartments"][0]["id"]
        user = await app.signed_in_user()
        assert (await app.grant(compartment, user)).status_code == 201
        old = await provision(broker, bank["provisioning_token"], "old-box")
        async with device(
            broker.url,
            bank_id,
            client_id="old-box",
            username=old.mqtt_user,
            password=old.mqtt_password,
            session_id="old",
        ) as old_box:
            await old_box.heartbeat(retain=False)
            await app.until_presence(bank_id, "online")
            await until_configured(app, bank_id)  # the new bank's apply_config, answered
            opened = await app.open(user, compartment)
            assert opened.status_code == 202, opened.text
            await app.until_transaction(opened.json()["transaction_id"], status="success")
            old_commands = [c["action"] for c in old_box.commands]
            assert old_commands == ["apply_config", "open_compartment"]

            # re-provisioning (a replacement device) revokes the old credentials now
            new = await provision(broker, await rotate(app, bank_id), "new-box")
            provisioned = (await app.events(bank_id, "LockerBankProvisioned"))[-1]["data"]
            assert provisioned["previous_mqtt_user"] == old.mqtt_user
            window_ends = datetime.fromisoformat(provisioned["revocation_window_ends_at"])
            revoked_at = datetime.fromisoformat(provisioned["provisioned_at"])
            assert (window_ends - revoked_at).total_seconds() == CACHE_SECONDS + 0 + 2
            assert app.context.fleet.banks[bank_id].presence == "unknown"

            async with device(
                broker.url,
                bank_id,
                client_id="new-box",
                username=new.mqtt_user,
                password=new.mqtt_password,
                session_id="new",
            ) as new_box:
                # --- during the window -------------------------------------------------------
                refused = await app.open(user, compartment)
                assert refused.status_code == 409, refused.text
                assert refused.json()["reason"] == "revocation_pending"
                # the new device is allowed by the broker, and lockerd cannot tell it from the
                # old one: nothing from the bank is applied yet
                await new_box.heartbeat(retain=False)
                await until_dropped(app, "revoked_session", 1)
                # the old one: from the broker's cache (then dropped by lockerd) or denied
                await old_box.heartbeat(retain=False)
                await wait_for_plugin_log(
                    broker,
                    lambda log: (
                        dropped(app, "revoked_session") >= 2
                        or any(
                            e["event"] == "request"
                            and e.get("username") == old.mqtt_user
                            and e.get("acc") == 2
                            and e.get("status") == 403
                            for e in log
                        )
                    ),
                    what="the old session's heartbeat dropped or denied",
                )
                assert app.inbound("state", "processed") == 1  # still only the first heartbeat
                assert app.context.fleet.banks[bank_id].presence == "unknown"
                assert datetime.now(UTC) < window_ends, "the test machine was too slow"

                # --- after the window ----------------------------------------------------------
                await trio.sleep((window_ends - datetime.now(UTC)).total_seconds() + 0.05)
                # the cache has expired: the broker asks lockerd, which denies the old user
                mark = len(broker.goauth.plugin_log())
                await old_box.heartbeat(retain=False)
                await wait_for_plugin_log(
                    broker,
                    lambda log: any(
                        e["event"] == "request"
                        and e.get("username") == old.mqtt_user
                        and e.get("acc") == 2
                        for e in log[mark:]
                    ),
                    what="the broker asking about the old session's heartbeat",
                )
                asked = [
                    e
                    for e in broker.goauth.plugin_log()[mark:]
                    if e["event"] == "request" and e.get("username") == old.mqtt_user
                ]
                assert [(e["acc"], e["status"]) for e in asked] == [(2, 403)]

                await new_box.heartbeat(retain=False)
                await app.until_presence(bank_id, "online")
                opened = await app.open(user, compartment)
                assert opened.status_code == 202, opened.text
                transaction = opened.json()["transaction_id"]
                await app.until_transaction(transaction, status="success")
                assert [c["transaction_id"] for c in new_box.commands] == [transaction]
                # the broker asked lockerd about delivering it to the old session: denied
                await wait_for_plugin_log(
                    broker,
                    lambda log: any(
                        e["event"] == "request"
                        and e.get("username") == old.mqtt_user
                        and e.get("acc") == 1
                        and e.get("topic") == f"locker/{bank_id}/command"
                        and e.get("status") == 403
                        for e in log
                    ),
                    what="the command's delivery to the old session denied",
                )
                # nothing since the revocation
                assert [c["action"] for c in old_box.commands] == old_commands

        # and the old credentials cannot log in again
        settings = client_settings(
            broker.url, "old-box", username=old.mqtt_user, password=old.mqtt_password
        )
        with pytest.raises(ConnectionRefusedByBroker) as refusal:
            async with open_mqtt_client(settings, reconnect=False):
                pass
        assert refusal.value.code == 5
        history = [e["type"] for e in await app.events(bank_id)]
        assert history.count("CompartmentOpened") == 2
        assert "CommandTimedOut" not in history


async def test_without_a_broker_cache_revocation_is_exact_and_opens_no_window(
    tmp_path: Path,
    compose_broker_factory: ComposeBrokerFactory,
    goauth_broker_factory: GoAuthBrokerFactory,
) -> None:
    broker = start(0, compose_broker_factory, goauth_broker_factory)
    async with lockerd_at(broker, tmp_path / "l.db") as app:
        bank = await app.create_bank(heartbeat_interval_seconds=3600)
        bank_id = bank["id"]
        old = await provision(broker, bank["provisioning_token"], "old-box")
        async with device(
            broker.url,
            bank_id,
            client_id="old-box",
            username=old.mqtt_user,
            password=old.mqtt_password,
            session_id="old",
        ) as old_box:
            await old_box.heartbeat(retain=False)
            await app.until_presence(bank_id, "online")
            new = await provision(broker, await rotate(app, bank_id), "new-box")
            provisioned = (await app.events(bank_id, "LockerBankProvisioned"))[-1]["data"]
            assert provisioned["revocation_window_ends_at"] is None
            mark = len(broker.goauth.plugin_log())
            await old_box.heartbeat(retain=False)  # denied at once: nothing cached
            await wait_for_plugin_log(
                broker,
                lambda log: any(
                    e["event"] == "request" and e.get("username") == old.mqtt_user
                    for e in log[mark:]
                ),
            )
            async with device(
                broker.url,
                bank_id,
                client_id="new-box",
                username=new.mqtt_user,
                password=new.mqtt_password,
                session_id="new",
            ) as new_box:
                await new_box.heartbeat(retain=False)
                await app.until_presence(bank_id, "online")
        assert dropped(app, "revoked_session") == 0
        assert app.inbound("state", "processed") == 2  # the old box's first, the new one's
