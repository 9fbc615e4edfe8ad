"""One account cannot read, cancel or change another's batches, messages, orders, groups, inbound SMS or failed
notifications, in any dialect; it is told "not found" exactly as for an id that does not exist (no existence
leak), and the other account's data is unchanged. Through the real handlers on moto."""

from __future__ import annotations

import base64
import json
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
    portal_sign_in,
    simulator_callback,
    stored_state,
    upstream_configurations,
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


# ---------------------------------------------------------------- page cursors


@pytest.fixture(scope="module")
def owner_pages(aws: dict[str, str], gateway: Gateway, owner: dict[str, Any]) -> dict[str, Any]:
    """Account B with two or more of each listed thing, so each of its lists has a `next` page: a second group,
    inbound SMS and failed notification, and a batch of three messages."""
    b: Tenant = owner["tenant"]
    group = gateway.request("POST", "/ng/v1/groups", headers=b.bearer, body={"name": "More", "members": [OWNER_NUMBER]})
    assert group.status == 201, group
    inbound = {"message_id": "sim-owner-2", "from": OWNER_NUMBER, "to": "48974", "text": "private reply 2"}
    received = simulator_callback(gateway, "inbound", {**inbound, "received_at": "2026-01-02T11:00:00Z"})
    assert received.status == 200 and received.json["routed"], received
    numbers = [OWNER_NUMBER, "2348020000001", "2348020000002"]
    sent = gateway.request(
        "POST", "/ng/v1/sendsms", headers=b.bearer, body={"from": "48974", "to": numbers, "body": "e"}
    )
    assert sent.status == 200, sent
    with pytest.MonkeyPatch.context() as patch:
        from sms_gateway import bootstrap, consumers

        patch.setenv("NOTIFY_RETRY_DELAYS", "0")
        patch.setattr(consumers, "post_webhook", ClientWebhook(0, 0, 0))
        bootstrap.reset()
        dead_notification(aws, b.account["account_id"], n=2)
    bootstrap.reset()
    return {"reference_id": str(sent.json["reference_id"]), "numbers": numbers}


def _cursor(pk: str, sk: str) -> str:
    """A cursor as the store encodes one (adapters/cursors.encode_cursor), naming any key."""
    from sms_gateway.adapters.cursors import encode_cursor

    return str(encode_cursor({"pk": {"S": pk}, "sk": {"S": sk}}))


def _number(an_id: str) -> int:
    """The number an id shows (`grp_388096415338674228`: 388096415338674228)."""
    return int(re.sub(r"[^0-9]", "", an_id))


def _next_of(answer: Answer) -> str:
    assert answer.status == 200, answer
    token = answer.json.get("next", answer.json.get("next_cursor"))
    assert token, answer
    return str(token)


def _never_the_owners(answer: Answer, secrets_of_b: list[str], own: set[str], key: str, *, refused: bool) -> None:
    """A cursor into another account's list is refused as not one of this listing's (400); one into the caller's
    own list at another's item is a place in that list. Neither ever shows the other account's items."""
    for secret in secrets_of_b:
        assert secret not in answer.text, (secret, answer)
    if refused:
        assert answer.status == 400 and "not valid" in answer.text, answer
    else:
        assert answer.status == 200, answer
        assert {str(item[key]) for item in answer.json["data"]} <= own, answer


def test_another_accounts_cursors_never_page_through_its_lists(aws, gateway, owner, owner_pages, intruder):
    from sms_gateway.adapters.dynamodb import account_pk, message_sk, messages_pk
    from sms_gateway.adapters.dynamodb_groups import group_sk
    from sms_gateway.adapters.dynamodb_inbox import inbound_sk, inbox_pk

    b: Tenant = owner["tenant"]
    b_id, a_id = b.account["account_id"], intruder.account["account_id"]
    top, bottom = "9" * 19, "0" * 19
    b_groups = gateway.request("GET", "/ng/v1/groups", headers=b.bearer).json["data"]
    b_reports = gateway.request(
        "GET", f"/ng/v1/batches/{owner_pages['reference_id']}/delivery_report", headers=b.bearer
    ).json["data"]
    b_status = b_reports[0]["status"]
    a_reports = gateway.request(
        "GET", f"/ng/v1/batches/{intruder.reference_id}/delivery_report", headers=intruder.bearer
    ).json["data"]
    b_inbound_ids = [str(i["id"]) for i in gateway.request("GET", "/ng/v1/inbounds", headers=b.bearer).json["data"]]
    reports_path = f"/ng/v1/batches/{owner_pages['reference_id']}/delivery_report"
    a_reports_path = f"/ng/v1/batches/{intruder.reference_id}/delivery_report"
    b_message_ids = [m["message_id"] for m in b_reports]
    b_failures = gateway.request("GET", "/ng/v1/webhooks/failures", headers=b.bearer, query={"limit": "1"})
    failure_cursor = json.loads(base64.urlsafe_b64decode(_next_of(b_failures)))
    # Each listing: its path, page-size and cursor parameters, B's next page, the cursors A could make (B's
    # partition from either end, and A's own partition at B's item), what B's items show and what A's are.
    listings = [
        (
            "/ng/v1/groups",
            {},
            ("page_size", "next"),
            _next_of(gateway.request("GET", "/ng/v1/groups", headers=b.bearer, query={"page_size": "1"})),
            [
                _cursor(account_pk(b_id), group_sk(0)),
                _cursor(account_pk(b_id), "GROUP#" + top),
                _cursor(account_pk(a_id), group_sk(_number(b_groups[0]["group_id"]))),
            ],
            [str(g["group_id"]) for g in b_groups] + ["More"],
            {intruder.group_id},
            "group_id",
        ),
        (
            "/ng/v1/inbounds",
            {},
            ("limit", "cursor"),
            _next_of(gateway.request("GET", "/ng/v1/inbounds", headers=b.bearer, query={"limit": "1"})),
            [
                _cursor(inbox_pk(b_id), "INBOX#" + top),
                _cursor(inbox_pk(b_id), "INBOX#" + bottom),
                _cursor(inbox_pk(a_id), inbound_sk(_number(b_inbound_ids[0]))),
            ],
            ["private reply", *b_inbound_ids],
            set(),
            "id",
        ),
        (
            "/ng/v1/webhooks/failures",
            {},
            ("limit", "cursor"),
            _next_of(b_failures),
            [
                _cursor(f"NOTIFY#{b_id}", "FAILAT#9999-12-31T23:59:59.999999Z#z"),
                _cursor(f"NOTIFY#{a_id}", failure_cursor["sk"]["S"]),
            ],
            [owner["notification_id"], "dlr_2_3"],
            set(),
            "id",
        ),
    ]
    b_reports_next = _next_of(gateway.request("GET", reports_path, headers=b.bearer, query={"page_size": "1"}))
    b_filtered_next = _next_of(
        gateway.request("GET", reports_path, headers=b.bearer, query={"page_size": "1", "status": b_status})
    )
    a_batch = int(intruder.reference_id)
    crafted_reports = [
        _cursor(messages_pk(b_id, int(owner_pages["reference_id"])), message_sk(0)),
        _cursor(messages_pk(b_id, int(owner_pages["reference_id"])), "MSG#" + top),
        _cursor(messages_pk(a_id, a_batch), message_sk(int(b_message_ids[0]))),
    ]
    a_messages = {m["message_id"] for m in a_reports}
    b_numbers = [n for n in owner_pages["numbers"] if n != OWNER_NUMBER] + b_message_ids
    for status_filter in ({}, {"status": b_status}):
        listings.append(
            (
                a_reports_path,
                status_filter,
                ("page_size", "next"),
                b_filtered_next if status_filter else b_reports_next,
                crafted_reports,
                b_numbers,
                a_messages,
                "message_id",
            )
        )
    before = stored_state(aws)
    for path, extra, (size, name), theirs, crafted, secrets_of_b, own, key in listings:
        # B's own next page, and A's cursors into B's partition, are refused; the last of `crafted` is in A's own
        for cursor in (theirs, *crafted):
            answer = gateway.request("GET", path, headers=intruder.bearer, query={**extra, size: "1", name: cursor})
            _never_the_owners(answer, secrets_of_b, own, key, refused=cursor != crafted[-1])
        # And B's cursor on B's own list still pages (it is a real one)
        assert (
            gateway.request(
                "GET",
                path.replace(intruder.reference_id, owner_pages["reference_id"]),
                headers=b.bearer,
                query={**extra, size: "1", name: theirs},
            ).status
            == 200
        )
    assert stored_state(aws) == before


def test_portal_pages_show_another_accounts_ids_exactly_as_ids_that_do_not_exist(
    aws, gateway, owner, owner_pages, intruder
):
    from sms_gateway import bootstrap
    from sms_gateway.adapters.dynamodb import account_pk, batch_sk, message_sk, messages_pk

    b: Tenant = owner["tenant"]
    b_id, a_id = b.account["account_id"], intruder.account["account_id"]
    b_batch = int(owner_pages["reference_id"])
    b_messages = gateway.request("GET", f"/ng/v1/batches/{b_batch}/delivery_report", headers=b.bearer).json["data"]
    b_message = int(b_messages[0]["message_id"])
    store = bootstrap.gateway().store
    # The cursors B's own pages carry: its batch list's and its batch's messages'
    _, b_list_cursor = store.list_batches(b_id, limit=1)
    _, b_messages_cursor = store.list_messages(b_id, b_batch, limit=1)
    assert b_list_cursor and b_messages_cursor
    a_batch = int(intruder.reference_id)
    page = {"cookie": portal_sign_in(gateway, intruder.account)["cookie"]}
    before = stored_state(aws)

    def seen(query: str, their_id: int, nobodys: int) -> tuple[Answer, Answer]:
        """The page for B's id and for an id that is nobody's, each with the id written as ID."""
        theirs = gateway.request("GET", f"/portal/messages?{query.format(id=their_id)}", headers=page)
        missing = gateway.request("GET", f"/portal/messages?{query.format(id=nobodys)}", headers=page)
        assert theirs.status == missing.status, (query, theirs, missing)
        assert theirs.text.replace(str(their_id), "ID") == missing.text.replace(str(nobodys), "ID"), query
        for secret in (str(b_batch), str(b_message), OWNER_NUMBER, "private reply", b.account["name"]):
            assert secret not in theirs.text.replace(str(their_id), "ID"), (query, secret)
        return theirs, missing

    # A batch page, and a search by a batch's reference_id or a message's id: B's is nobody's
    assert seen("batch={id}", b_batch, b_batch + 1)[0].status == 404
    for their_id in (b_batch, b_message):
        found, _ = seen("reference={id}", their_id, their_id + 1)
        assert "No batches" in found.text.split('id="results"')[1].split("</section>")[0], their_id
    # A cursor in B's partition (the one B's page carries, or naming B's batch) is refused as nobody's is
    refused, _ = seen("cursor={id}", b_list_cursor, _cursor(account_pk(b_id), batch_sk(b_batch + 1)))
    assert refused.status == 400, refused
    seen("cursor={id}", _cursor(account_pk(b_id), batch_sk(b_batch)), _cursor(account_pk(b_id), batch_sk(b_batch + 1)))
    # And in A's own partition at B's batch it is a place in A's own list, as a batch id that does not exist is
    listed, _ = seen(
        "cursor={id}", _cursor(account_pk(a_id), batch_sk(b_batch)), _cursor(account_pk(a_id), batch_sk(b_batch + 1))
    )
    assert listed.status == 200, listed
    # A's own batch page with B's messages cursor, or one naming B's message, is refused as one naming nobody's
    for cursor in (b_messages_cursor, _cursor(messages_pk(b_id, b_batch), message_sk(b_message))):
        refused, _ = seen(
            f"batch={a_batch}&cursor={{id}}", cursor, _cursor(messages_pk(b_id, b_batch + 1), message_sk(1))
        )
        assert refused.status == 400, refused
    assert stored_state(aws) == before


def test_a_kannel_report_naming_another_accounts_message_changes_nothing_and_is_unmatched(
    aws, gateway, owner, intruder, monkeypatch
):
    from sms_gateway import bootstrap
    from sms_gateway.dialects import callbacks

    b: Tenant = owner["tenant"]
    bootstrap.reset()
    store = bootstrap.gateway().store
    (message,), _ = store.list_messages(b.account["account_id"], int(b.reference_id))
    assert message.upstream != "kannel", message
    outcomes: list[Any] = []
    receive = callbacks.receive_delivery_reports
    monkeypatch.setattr(
        callbacks, "receive_delivery_reports", lambda *args: outcomes.append(receive(*args)) or outcomes[-1]
    )
    before = stored_state(aws)
    # When Kannel (its own valid callback token) reports B's message, by our client reference, delivered and failed
    token = upstream_configurations()["kannel"]["callback_token"]
    for dlr_type, receipt in (("1", "id:1 stat:DELIVRD err:000"), ("16", "NACK/0x0000000b/Invalid")):
        answer = gateway.request(
            "GET",
            "/callbacks/kannel/dlr",
            query={"ref": message.key.to_ref(), "token": token, "type": dlr_type, "answer": receipt},
        )
        assert answer.status == 200, answer
    # Then Kannel is answered (it would retry forever otherwise), nothing is stored or queued (no status, no refund,
    # no notification to B), and each report is counted unmatched
    assert stored_state(aws) == before
    assert [(o.applied, o.unchanged, o.unmatched) for o in outcomes] == [(0, 0, 1), (0, 0, 1)]
