from domain.actor import ADMIN_TOKEN_ACTOR_ID, Actor


def test_a_user_actor_names_the_user() -> None:
    actor = Actor.user("u-1")
    assert actor.to_wire() == {"kind": "user", "id": "u-1"}
    assert actor.audit_id == "u-1"


def test_the_admin_token_belongs_to_nobody() -> None:
    actor = Actor.admin_token()
    assert actor.to_wire() == {"kind": "admin_token"}
    assert actor.audit_id == ADMIN_TOKEN_ACTOR_ID
