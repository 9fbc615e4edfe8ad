"""The 9bits and batches dialects at their edges: a keyed group send resumed after its group changed, inbox dates
at the ends of the calendar, a long code written without its '+', a reply threaded onto its own sender's message."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import FakeContext, load_function
from tests.integration.test_batches_dialect import call, create_group, request
from tests.integration.test_idempotency_and_credits import (
    Killed,
    batches_of,
    die_once,
    leases_run_out,
    messages_of,
    queued_message_ids,
    with_key,
)
from tests.integration.test_send_path import balance

AIRTEL = "2348020000000"
MEMBERS = [f"23480300{n:05d}" for n in range(30)]


@pytest.fixture
def api(aws: dict[str, str]) -> Any:
    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


# ---------------------------------------------------------------- 1. a resumed keyed send to a group


def test_a_keyed_send_to_a_group_resumed_after_the_group_changed_loses_no_stored_charged_message(
    aws, account, api, monkeypatch
):
    from sms_gateway.adapters.dynamodb import DynamoStore

    token = account["token"]
    group_id = create_group(api, token, MEMBERS)
    body = {"from": "48974", "to": [group_id], "body": "Tonight: two for one"}
    # Given a keyed send to the 30-member group whose Lambda dies after storing its first 25 messages
    die_once(monkeypatch, DynamoStore, "_batch_write", on_call=2)
    with pytest.raises(Killed):
        api(with_key(request(token, "POST", "/ng/v1/sendsms", body), "order-77"))
    (batch,) = batches_of(account["account_id"])
    stored_before = {m.message_id: m.msisdn for m in messages_of(account["account_id"], batch.reference_id)}
    assert len(stored_before) == 25
    # And meanwhile a member is added to the group (it sorts before the others)
    status, _ = call(api, token, "POST", f"/ng/v1/groups/{group_id}/members", {"members": [AIRTEL]})
    assert status == 200
    # When the client retries under its key once the dead request's lease ran out
    leases_run_out()
    retried = api(with_key(request(token, "POST", "/ng/v1/sendsms", body), "order-77"))
    assert retried["statusCode"] == 200, retried
    answer = json.loads(retried["body"])
    messages = messages_of(account["account_id"], batch.reference_id)
    # Then every message the first request stored and charged is still there, to the same number
    after = {m.message_id: m.msisdn for m in messages}
    overwritten = {i: (n, after.get(i)) for i, n in stored_before.items() if after.get(i) != n}
    assert overwritten == {}, f"stored messages overwritten by the retry (id: before, after): {overwritten}"
    # And the credits taken are exactly what the stored messages cost, the answer counts them, each queued once
    assert 100 - balance(account["account_id"]) == sum(m.price for m in messages)
    assert answer["recipients_processed"] == len(messages)
    queued = queued_message_ids(aws)
    assert sorted(queued) == sorted(set(queued)) == sorted(m.message_id for m in messages)


# ---------------------------------------------------------------- 2. inbox date filters at the ends of the calendar


@pytest.mark.parametrize(
    "query",
    [
        {"from": "0001-01-01"},
        {"from": "0001-01-01T00:00:00"},
        {"to": "9999-12-31"},
        {"to": "9999-12-31T23:59:59-05:00"},
    ],
)
def test_an_inbox_date_at_the_end_of_the_calendar_is_read_not_a_500(aws, account, api, query):
    # "from the beginning" / "until forever" sentinels are valid ISO 8601 dates: an empty page (or a 400 naming
    # the parameter), never the internal-error 500 (an OverflowError moving the date into UTC)
    status, body = call(api, account["token"], "GET", "/ng/v1/inbounds", **query)
    assert status in (200, 400), body
    assert body["status_code"] == status


@pytest.mark.parametrize(
    ("path", "name", "maximum"),
    [
        ("/ng/v1/groups", "page_size", 1000),
        ("/ng/v1/batches/1/delivery_report", "page_size", 1000),
        ("/ng/v1/inbounds", "limit", 100),
        ("/ng/v1/webhooks/failures", "limit", 500),
    ],
)
def test_a_page_size_too_long_to_read_as_a_number_is_a_400_naming_the_parameter(aws, account, api, path, name, maximum):
    # More than 4300 digits is more than Python's int() reads (a ValueError, which was the internal-error 500 and
    # counted towards the api's error alarm); blanks and leading zeros around a good size are still read
    for raw in ("1" * 5000, "0" * 5000):
        status, body = call(api, account["token"], "GET", path, **{name: raw})
        assert (status, body["status_code"]) == (400, 400), body
        assert f"`{name}` must be a whole number from 1 to {maximum}" in body["message"]
        assert len(body["message"]) < 200
    for raw in (" 05 ", "0" * 5000 + "5"):
        status, body = call(api, account["token"], "GET", path, **{name: raw})
        assert status == (404 if "batches" in path else 200), body


# ---------------------------------------------------------------- 3. a registered long code given without its '+'


def test_a_long_code_registered_with_plus_can_send_when_from_is_written_without_it(aws, api):
    # Given an account whose long code was registered as "+2348090000001" (the registry keeps one form per sender:
    # '+' or not is the same sender, and an inbound SMS to "2348090000001" is routed to this account)
    from sms_gateway.bootstrap import gateway
    from sms_gateway_tools.admin import create_account

    account = create_account(name="Two-way", senders=["+2348090000001"], credits=10)
    assert gateway().store.account_id_for_sender("2348090000001") == account["account_id"]
    # When the client replies from that number as the seeds write numbers, without '+'
    status, body = call(
        api, account["token"], "POST", "/ng/v1/sendsms", {"from": "2348090000001", "to": AIRTEL, "message": "hi"}
    )
    # Then it is the account's own sender: accepted
    assert (status, body.get("message")) == (200, "request is being processed"), body


# ---------------------------------------------------------------- 4. a reply threads onto another sender's message


def test_a_reply_to_one_shortcode_carries_the_ref_id_of_that_shortcode_s_message_not_another_s(aws, api):
    import boto3

    from sms_gateway.bootstrap import gateway
    from sms_gateway.domain.models import utc_now
    from sms_gateway.domain.status import MessageStatus
    from sms_gateway_tools.admin import create_account
    from sms_gateway_tools.localstack.resources import put_simulator_parameter
    from tests.integration.test_inbox_and_webhook_settings import SIMULATOR_SECRET, signed_inbound_callback

    # Given an account with two shortcodes: 48974 (cinema) and 40404 (its OTPs)
    account = create_account(name="Two codes", senders=["48974", "40404"], credits=10)
    token = account["token"]
    sends = [
        {
            "from": "48974",
            "to": AIRTEL,
            "message": "When was the last time you went to the cinema?",
            "session_id": "cinema-session",
            "ref_id": "cinema-ref",
        },
        {
            "from": "40404",
            "to": AIRTEL,
            "message": "Your code is 123456",
            "session_id": "otp-session",
            "ref_id": "otp-ref",
        },
    ]
    store = gateway().store
    for body in sends:  # the cinema question first, the OTP after it; both reached the handset
        status, answer = call(api, token, "POST", "/ng/v1/sendsms", body)
        assert status == 200, answer
        messages = store.list_messages(account["account_id"], int(answer["reference_id"]), limit=10)[0]
        store.move_messages(messages, MessageStatus.SUBMITTED, now=utc_now())
    # When the number answers the cinema question, texting 48974 (the simulator's sample inbound: to "48974")
    put_simulator_parameter(boto3.client("ssm"), "http://127.0.0.1:9", SIMULATOR_SECRET)
    callback = load_function("webhook").handler(signed_inbound_callback(), FakeContext())
    assert callback["statusCode"] == 200, callback
    status, inbox = call(api, token, "GET", "/ng/v1/inbounds")
    assert status == 200, inbox
    [entry] = inbox["data"]
    assert entry["to"] == "48974"
    # Then the reply continues 48974's conversation (seed 2: the Receive SMS to 48974 carries the ref_id of the
    # message it answers), not the OTP that 40404 sent
    assert (entry["session_id"], entry["ref_id"]) == ("cinema-session", "cinema-ref")


# ---------------------------------------------------------------- a keyed group create that died or lost its answer


def test_a_keyed_group_create_whose_request_died_is_answered_by_its_retry_with_the_group_it_made(
    aws, account, api, monkeypatch
):
    from sms_gateway.adapters.dynamodb import DynamoStore

    token = account["token"]
    body = {"name": "Cinema regulars", "members": [AIRTEL]}
    # Given a group create under an Idempotency-Key whose Lambda times out after storing the group, before its
    # answer was kept (the client saw a 5xx or a timeout: exactly what the key is for)
    die_once(monkeypatch, DynamoStore, "complete")
    with pytest.raises(Killed):
        api(with_key(request(token, "POST", "/ng/v1/groups", body), "group-1"))
    _, listed = call(api, token, "GET", "/ng/v1/groups")
    [made] = listed["data"]
    # When the client retries under its key (after any lease a send would wait for)
    leases_run_out()
    retried = api(with_key(request(token, "POST", "/ng/v1/groups", body), "group-1"))
    # Then it gets the group the first request made (docs/dialects/9bits.md: "An Idempotency-Key header makes a
    # retry return the same group"), not "still being processed" until the key's 24-hour window ends
    assert retried["statusCode"] == 201, retried["body"]
    assert json.loads(retried["body"])["group_id"] == made["group_id"]
    assert len(call(api, token, "GET", "/ng/v1/groups")[1]["data"]) == 1


def test_a_keyed_group_create_that_failed_after_storing_is_not_created_twice_by_its_retry(
    aws, account, api, monkeypatch
):
    from sms_gateway.adapters.dynamodb import DynamoStore

    token = account["token"]
    body = {"name": "Cinema regulars", "members": [AIRTEL]}
    real_create = DynamoStore.create_group
    calls = [0]

    def stored_but_answer_lost(self: Any, group: Any) -> bool:
        # DynamoDB applied the put; its answer never came back (a timeout or reset connection in botocore)
        made = real_create(self, group)
        calls[0] += 1
        if calls[0] == 1:
            from botocore.exceptions import ReadTimeoutError

            raise ReadTimeoutError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com/")
        return made

    monkeypatch.setattr(DynamoStore, "create_group", stored_but_answer_lost)
    first = api(with_key(request(token, "POST", "/ng/v1/groups", body), "group-2"))
    assert first["statusCode"] == 500
    # When the client does what the 500 says: "send it again under the same Idempotency-Key". At once, the key is
    # still held (as a send's is): the attempt that failed may have stored the group
    again = api(with_key(request(token, "POST", "/ng/v1/groups", body), "group-2"))
    assert again["statusCode"] == 409 and "still being processed" in again["body"]
    assert len(call(api, token, "GET", "/ng/v1/groups")[1]["data"]) == 1
    # And once the failed attempt's lease has run out, the retry answers with the group it made
    leases_run_out()
    retried = api(with_key(request(token, "POST", "/ng/v1/groups", body), "group-2"))
    assert retried["statusCode"] == 201, retried["body"]
    # Then the account has the one group, not two of the same name from one keyed request
    groups = call(api, token, "GET", "/ng/v1/groups")[1]["data"]
    assert [g["group_id"] for g in groups] == [json.loads(retried["body"])["group_id"]]
