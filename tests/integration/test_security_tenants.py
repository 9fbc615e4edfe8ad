"""One account cannot read, cancel or change another's batches, messages, orders, groups, inbound SMS or failed
notifications, in any dialect; it is told "not found" exactly as for an id that does not exist (no existence
leak), and the other account's data is unchanged. Through the real handlers on moto."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.integration.test_webhook_retries import ClientWebhook, dead_notification
from tests.security_stack import (
    Answer,
    Gateway,
    Tenant,
    module_fixtures,
    populate,
    simulator_callback,
    stored_state,
)

OWNER_NUMBER = "2348020000000"


# One stack for the module: every test here only reads, or asserts that nothing changed.
aws, gateway = module_fixtures()


@pytest.fixture(scope="module")
def owner(aws: dict[str, str], gateway: Gateway) -> dict[str, Any]:
    """Account B: a batch sent now, a scheduled batch and order, a group, an inbound SMS, a dead notification."""
    tenant = populate(gateway, "Owner", "48974", OWNER_NUMBER)
    inbound = {"message_id": "sim-owner-1", "from": OWNER_NUMBER, "to": "48974", "text": "private reply"}
    received = simulator_callback(gateway, "inbound", {**inbound, "received_at": "2026-01-02T10:00:00Z"})
    assert received.status == 200 and received.json["routed"], received
    with pytest.MonkeyPatch.context() as patch:
        from sms_gateway import bootstrap, consumers

        patch.setenv("NOTIFY_RETRY_DELAYS", "0")
        patch.setattr(consumers, "post_webhook", ClientWebhook(0, 0, 0))
        bootstrap.reset()
        notification_id = dead_notification(aws, tenant.account["account_id"])
    bootstrap.reset()
    return {"tenant": tenant, "notification_id": notification_id}


@pytest.fixture(scope="module")
def intruder(gateway: Gateway) -> Tenant:
    """Account A, with data of its own (so "not found" is not merely an empty account)."""
    return populate(gateway, "Intruder", "55555", "2348030000000")


def nobodys_id(their_id: str) -> str:
    """An id of the same shape that is nobody's (the next number: ids carry random bits, so it is free)."""
    return re.sub(r"\d+", lambda m: str(int(m.group()) + 1), their_id, count=1)


def _same_as_nobody(theirs: Answer, nobodys: Answer, their_id: str) -> None:
    """A refusal that says no more than the answer for an id that does not exist."""
    assert theirs.status == nobodys.status, (theirs, nobodys)
    assert theirs.text.replace(their_id, nobodys_id(their_id)) == nobodys.text, (theirs, nobodys)


def _refused_as_missing(gateway: Gateway, method: str, path: str, their_id: str, **request: Any) -> Answer:
    theirs = gateway.request(method, path.format(id=their_id), **request)
    nobodys = gateway.request(method, path.format(id=nobodys_id(their_id)), **request)
    _same_as_nobody(theirs, nobodys, their_id)
    return theirs


def test_ninebits_batches_groups_and_failures_of_another_account_are_not_found(aws, gateway, owner, intruder):
    b: Tenant = owner["tenant"]
    a = intruder.bearer
    before = stored_state(aws)
    attempts = [
        ("GET", "/ng/v1/batches/{id}", b.reference_id, {}),
        ("GET", "/ng/v1/batches/{id}", b.scheduled_reference_id, {}),
        ("GET", "/ng/v1/batches/{id}/delivery_report", b.reference_id, {}),
        ("DELETE", "/ng/v1/batches/{id}", b.scheduled_reference_id, {}),
        # The session-key order and the shortcode batch are batches too, readable in 9bits by their owner only.
        ("GET", "/ng/v1/batches/{id}", b.order_id, {}),
        ("DELETE", "/ng/v1/batches/{id}", b.order_id, {}),
        ("GET", "/ng/v1/groups/{id}", b.group_id, {}),
        ("POST", "/ng/v1/groups/{id}/members", b.group_id, {"body": {"members": ["2348020000999"]}}),
        ("DELETE", "/ng/v1/groups/{id}/members", b.group_id, {"body": {"members": [OWNER_NUMBER]}}),
        ("DELETE", "/ng/v1/groups/{id}", b.group_id, {}),
        ("POST", "/ng/v1/webhooks/failures/{id}/resend", owner["notification_id"], {}),
    ]
    for method, path, their_id, extra in attempts:
        answer = _refused_as_missing(gateway, method, path, their_id, headers=a, **extra)
        assert answer.status == 404, (method, path, answer)
    # Sending to another account's group is refused like an unknown group id, and sends nothing
    send = {"from": "55555", "body": "hi"}
    theirs = gateway.request("POST", "/ng/v1/sendsms", headers=a, body={**send, "to": [b.group_id]})
    nobodys = gateway.request("POST", "/ng/v1/sendsms", headers=a, body={**send, "to": [nobodys_id(b.group_id)]})
    _same_as_nobody(theirs, nobodys, b.group_id)
    assert theirs.status == 400
    assert stored_state(aws) == before


def test_lists_show_only_the_callers_own_groups_inbound_sms_and_failures(aws, gateway, owner, intruder):
    b: Tenant = owner["tenant"]
    before = stored_state(aws)
    groups = gateway.request("GET", "/ng/v1/groups", headers=intruder.bearer)
    inbounds = gateway.request("GET", "/ng/v1/inbounds", headers=intruder.bearer)
    by_number = gateway.request("GET", "/ng/v1/inbounds", headers=intruder.bearer, query={"number": OWNER_NUMBER})
    failures = gateway.request("GET", "/ng/v1/webhooks/failures", headers=intruder.bearer)
    resend_all = gateway.request(
        "POST", "/ng/v1/webhooks/failures/resend", headers=intruder.bearer, body={"state": "dead"}
    )
    assert resend_all.status == 202 and resend_all.json["resent"] == 0, resend_all
    for answer in (groups, inbounds, by_number, failures, resend_all):
        assert answer.status in (200, 202), answer
        for secret in (b.group_id, "private reply", owner["notification_id"], b.account["account_id"]):
            assert secret not in answer.text, (secret, answer)
    assert [str(g["group_id"]) for g in groups.json["data"]] == [intruder.group_id]
    assert inbounds.json["data"] == [] and by_number.json["data"] == []
    # And the owner still sees its own (the lists work; they are scoped, not empty)
    assert "private reply" in gateway.request("GET", "/ng/v1/inbounds", headers=b.bearer).text
    assert owner["notification_id"] in gateway.request("GET", "/ng/v1/webhooks/failures", headers=b.bearer).text
    assert stored_state(aws) == before


def test_shortcode_getdlr_of_another_accounts_message_is_details_not_found(aws, gateway, owner, intruder):
    b: Tenant = owner["tenant"]
    credentials = {"apikey": intruder.account["apikey"], "partnerID": intruder.account["partner_id"]}
    before = stored_state(aws)
    for method in ("GET", "POST"):
        theirs = _getdlr(gateway, method, credentials, str(b.message_id))
        nobodys = _getdlr(gateway, method, credentials, nobodys_id(str(b.message_id)))
        _same_as_nobody(theirs, nobodys, str(b.message_id))
        assert theirs.json["response-code"] == 4093, (method, theirs)
    # And the owner reads it
    owner_credentials = {"apikey": b.account["apikey"], "partnerID": b.account["partner_id"]}
    assert _getdlr(gateway, "POST", owner_credentials, str(b.message_id)).json.get("response-code", 200) != 4093
    assert stored_state(aws) == before


def _getdlr(gateway: Gateway, method: str, credentials: dict[str, str], message_id: str) -> Answer:
    fields = {**credentials, "messageID": message_id}
    if method == "GET":
        return gateway.request("GET", "/api/services/getdlr", query=fields)
    return gateway.request("POST", "/api/services/getdlr", body=fields)


def test_session_key_orders_of_another_account_are_not_found(aws, gateway, owner, intruder):
    b: Tenant = owner["tenant"]
    before = stored_state(aws)
    for their_id in (b.order_id, b.reference_id, b.scheduled_reference_id):
        for method in ("GET", "DELETE"):
            answer = _refused_as_missing(gateway, method, "/sms/{id}", their_id, headers=intruder.session)
            assert answer.status == 404, answer
    assert stored_state(aws) == before
    # And the owner can still read and remove its order (the refusals were about the caller, not the order)
    assert gateway.request("GET", f"/sms/{b.order_id}", headers=b.session).status == 200


def test_a_session_key_only_works_with_its_own_user_key(aws, gateway, owner, intruder):
    b: Tenant = owner["tenant"]
    # A's session presented with B's user_key (or the reverse) is refused, never read as either account
    for headers in (
        {"user_key": b.session["user_key"], "Session_key": intruder.session["Session_key"]},
        {"user_key": intruder.session["user_key"], "Session_key": b.session["Session_key"]},
    ):
        answer = gateway.request("GET", f"/sms/{b.order_id}", headers=headers)
        assert answer.status == 401, answer
        assert "recipients" not in answer.text


def test_the_owners_data_is_intact_after_all_attempts(aws, gateway, owner, intruder):
    b: Tenant = owner["tenant"]
    batch = gateway.request("GET", f"/ng/v1/batches/{b.scheduled_reference_id}", headers=b.bearer)
    assert batch.status == 200 and "scheduled" in batch.text.lower(), batch
    group = gateway.request("GET", f"/ng/v1/groups/{b.group_id}", headers=b.bearer)
    assert group.status == 200 and re.search(OWNER_NUMBER[3:], group.text), group
    assert "2348020000999" not in group.text
