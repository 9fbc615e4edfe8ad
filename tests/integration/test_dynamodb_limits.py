"""Input that becomes part of a DynamoDB key stays within DynamoDB's limits, or is answered without reaching it.

DynamoDB refuses a partition key over 2048 bytes, a sort key over 1024 (ValidationException, "Size of hashkey has
exceeded the maximum size limit of2048 bytes"), on reads as on writes (docs: Service, account, and table quotas in
Amazon DynamoDB, "Partition key value"). moto enforces it on writes only; `keys_limited_as_dynamodb` makes this
test's reads behave as DynamoDB's."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import FakeContext, load_function, route_simulator_upstreams_to
from tests.integration.test_callback_acknowledgements import (
    TOKEN,
    configure,
    jasmin_dlr,
    kannel_delivering_inbound_for,
    kannel_inbound_event,
)
from tests.integration.test_provider_africastalking import (  # noqa: F401 (fixture)
    CALLBACK_TOKEN,
    MESSAGE_ID,
    at_upstream,
    delivery_report_body,
    webhook_event,
)
from tests.state_snapshot import assert_unchanged, capture, clients_for_moto

# Far over DynamoDB's key limit, well within the HTTP API's (a request line and headers of 10 KB, a body of 256 KB).
LONG_ID = "7e3b2f1a" * 400
# DynamoDB's words for it (its own spacing).
KEY_TOO_LARGE = (
    "One or more parameter values were invalid: Size of hashkey has exceeded the maximum size limit of2048 bytes"
)


def keys_limited_as_dynamodb(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's DynamoDB client refuses a GetItem whose key is over DynamoDB's limits, as DynamoDB does."""
    from botocore.exceptions import ClientError

    from sms_gateway.bootstrap import gateway

    client = gateway().store.client
    real_get_item = client.get_item

    def get_item(**kwargs: Any) -> Any:
        key = kwargs["Key"]
        if len(key["pk"]["S"].encode()) > 2048 or len(key["sk"]["S"].encode()) > 1024:
            raise ClientError({"Error": {"Code": "ValidationException", "Message": KEY_TOO_LARGE}}, "GetItem")
        return real_get_item(**kwargs)

    monkeypatch.setattr(client, "get_item", get_item)


def jasmin_upstream(aws: dict[str, str]) -> None:
    configure(
        aws,
        "jasmin",
        {"type": "jasmin", "url": "http://127.0.0.1:1401", "username": "u", "password": "p", "callback_token": TOKEN},
    )


def jasmin_dlr_by_its_id(upstream_message_id: str) -> dict[str, Any]:
    """A verified Jasmin DLR that names the message by Jasmin's id alone (no `ref` of ours in its URL)."""
    event = jasmin_dlr(TOKEN)
    event["rawQueryString"] = f"token={TOKEN}"
    event["queryStringParameters"] = {"token": TOKEN}
    event["body"] = f"id={upstream_message_id}&message_status=DELIVRD&level=2&err=000"
    return event


def test_a_delivery_report_whose_upstream_id_is_too_long_for_a_key_is_acknowledged_and_dropped(aws, monkeypatch):
    # Given a Jasmin upstream, and DynamoDB's key limits
    jasmin_upstream(aws)
    keys_limited_as_dynamodb(monkeypatch)
    webhook = load_function("webhook")
    state = clients_for_moto()
    before = capture(state)
    # When Jasmin posts a verified DLR whose id is longer than any key DynamoDB takes (no message has such an id)
    answer = webhook.handler(jasmin_dlr_by_its_id(LONG_ID), FakeContext())
    # Then it is acknowledged (Jasmin re-sends anything else, for ever) and dropped: nothing is held or written
    assert (answer["statusCode"], answer["body"]) == (200, "ACK/Jasmin"), answer
    assert_unchanged(state, before)


def kannel_mo(**query: str) -> dict[str, Any]:
    """A verified Kannel MO to the short code 48974, `query` its values replaced."""
    values = {"token": TOKEN, "from": "+2348020000000", "to": "48974", "ts": "1767398400", "id": "mo-1", **query}
    return kannel_inbound_event(values, "text/plain", "YES please", encoded=False)


def test_an_inbound_sms_whose_upstream_id_is_too_long_for_a_key_is_still_taken(aws, account, monkeypatch):
    # Given Kannel delivering the short code's SMS, and DynamoDB's key limits
    kannel_delivering_inbound_for(aws, account)
    keys_limited_as_dynamodb(monkeypatch)
    webhook = load_function("webhook")
    # When Kannel posts an SMS whose id is longer than any key DynamoDB takes
    answer = webhook.handler(kannel_mo(id=LONG_ID), FakeContext())
    # Then the SMS is taken and stored with its text (an upstream whose ids are that long loses none of its SMS)
    assert answer["statusCode"] == 200, answer
    from sms_gateway.bootstrap import gateway

    [stored] = gateway().store.list_inbounds(account["account_id"])[0]
    assert stored.text == "YES please"


def test_an_inbound_sms_to_a_number_too_long_for_a_key_is_refused_and_changes_nothing(aws, account, monkeypatch):
    # Given Kannel delivering the short code's SMS, and DynamoDB's key limits
    kannel_delivering_inbound_for(aws, account)
    keys_limited_as_dynamodb(monkeypatch)
    webhook = load_function("webhook")
    state = clients_for_moto()
    before = capture(state)
    # When Kannel posts an SMS to a "number" longer than any key DynamoDB takes (no sender is registered so)
    answer = webhook.handler(kannel_mo(to="4" * 3000), FakeContext())
    # Then it is refused as a callback that cannot be an SMS, as one from such a sender is, and nothing is written
    assert answer["statusCode"] == 400, answer
    assert "longer than 32 characters" in answer["body"]
    assert_unchanged(state, before)


class TakingUnderALongId:
    """A simulator-protocol upstream that takes every message under an id longer than any key DynamoDB takes."""

    def __init__(self) -> None:
        self.submits = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.submits += 1
        return httpx.Response(200, json={"message_id": LONG_ID, "status": "accepted"})


def sent_and_dispatched(aws: dict[str, str], account: dict[str, Any], upstream: TakingUnderALongId) -> Any:
    """A message sent by `account` and dispatched once, as it reads then."""
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic.batches import all_messages
    from tests.integration.test_send_path import as_lambda_sqs_event, queued_records, send_event

    body = {"from": "48974", "to": "2348020000000", "message": "hi"}
    sent = load_function("api").handler(send_event(account["token"], body), FakeContext())
    reference_id = int(json.loads(sent["body"])["reference_id"])
    dispatched = load_function("dispatcher").handler(as_lambda_sqs_event(queued_records(aws)), FakeContext())
    assert dispatched == {"batchItemFailures": []} and upstream.submits == 1
    [message] = all_messages(gateway().store, account["account_id"], reference_id)
    return message


def settled_once_no_report_came(aws: dict[str, str], monkeypatch: pytest.MonkeyPatch, message: Any) -> Any:
    """The message as its settle check leaves it once the DLR wait is over and no report came; the check is done at
    once (not redelivered until the notify DLQ takes it)."""
    from tests.integration.test_settle_checks import after_the_wait, drain_notify_queue, message_now, notify_pass

    after_the_wait(monkeypatch, aws, notify_pass(aws))
    drain_notify_queue(aws)
    return message_now(message)


@pytest.mark.parametrize("reports_by", ["our reference", "its own id"])
def test_a_message_taken_under_an_id_too_long_for_a_key_is_expired_and_refunded_once_no_report_came(
    aws, account, monkeypatch, reports_by
):
    from sms_gateway.adapters.providers.simulator import SimulatorProvider
    from tests.integration.test_send_path import balance

    # Given an upstream that takes messages under ids longer than any key DynamoDB takes (one reporting by our
    # reference, as the simulator does, or by its own id, as Africa's Talking does)
    upstream = TakingUnderALongId()
    route_simulator_upstreams_to(monkeypatch, upstream)
    if reports_by == "its own id":
        monkeypatch.setattr(SimulatorProvider, "echoes_client_ref", False)
    # When a message is sent and dispatched
    message = sent_and_dispatched(aws, account, upstream)
    # Then it is submitted once, and reads submitted, charged
    assert message.status == "submitted" and balance(account["account_id"]) == 100 - message.price
    # When no report comes within the DLR wait, and the settle check comes due
    settled = settled_once_no_report_came(aws, monkeypatch, message)
    # Then the message is expired for want of a report and refunded, as any message no report reached
    assert (settled.status, settled.error_code) == ("expired", "no_delivery_report")
    assert balance(account["account_id"]) == 100


def test_a_message_recorded_with_an_id_too_long_for_a_key_before_2026_12_07_is_still_settled(aws, account, monkeypatch):
    from sms_gateway.adapters.dynamodb import _key_of
    from sms_gateway.bootstrap import gateway
    from tests.integration.test_send_path import balance

    # Given a message an upstream took under an id too long for a key, recorded with that id as dispatchers did
    upstream = TakingUnderALongId()
    route_simulator_upstreams_to(monkeypatch, upstream)
    message = sent_and_dispatched(aws, account, upstream)
    store = gateway().store
    store.client.update_item(
        TableName=store.table_name,
        Key=_key_of(message.key),
        UpdateExpression="SET upstream_message_id = :long",
        ExpressionAttributeValues={":long": {"S": LONG_ID}},
    )
    # When no report comes within the DLR wait, and the settle check comes due
    settled = settled_once_no_report_came(aws, monkeypatch, message)
    # Then it is expired and refunded all the same
    assert (settled.status, settled.error_code) == ("expired", "no_delivery_report")
    assert balance(account["account_id"]) == 100


# DynamoDB's largest item (docs: "Item size": 400 KB, its attribute names and values together). moto enforces about
# as much on writes, though it counts an attribute an update replaces twice (its old value and its new).
MAX_ITEM_BYTES = 400_000


@pytest.mark.usefixtures("at_upstream")
def test_a_report_repeated_until_its_held_reports_fill_an_item_is_still_taken_and_settles_the_message(aws, account):
    from sms_gateway.adapters.dynamodb_delivery import upstream_link_key
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic.batches import all_messages
    from tests.integration.test_send_path import as_lambda_sqs_event, queued_records, send_event

    # Given reports for an AT id no message is linked to yet, held on its link item, one each time AT posted it
    webhook = load_function("webhook")
    sent_report = webhook_event("dlr", delivery_report_body("Sent"), CALLBACK_TOKEN)
    assert webhook.handler(sent_report, FakeContext())["statusCode"] == 200
    # (AT posted it again and again, until the item is near DynamoDB's item limit; written at once, as a loop of
    # webhook calls would leave it)
    store = gateway().store
    link = upstream_link_key("africastalking", MESSAGE_ID)
    item = store.client.get_item(TableName=store.table_name, Key=link)["Item"]
    [held] = item["held"]["L"]
    # (each element of a list takes a byte more than its value)
    repeats = (MAX_ITEM_BYTES - 2048) // (len(held["S"]) + 1)
    store.client.put_item(TableName=store.table_name, Item={**item, "held": {"L": [held] * repeats}})
    # When AT posts the final report for that id, and repeats of the first
    answers = [
        webhook.handler(event, FakeContext())["statusCode"]
        for event in (webhook_event("dlr", delivery_report_body("Success"), CALLBACK_TOKEN), sent_report, sent_report)
    ]
    # Then each is acknowledged (AT posts anything else again)
    assert answers == [200, 200, 200]
    # And once the message AT took under that id is dispatched, the final report settles it
    body = {"from": "48974", "to": "2348020000000", "message": "hi"}
    sent = load_function("api").handler(send_event(account["token"], body), FakeContext())
    reference_id = int(json.loads(sent["body"])["reference_id"])
    dispatched = load_function("dispatcher").handler(as_lambda_sqs_event(queued_records(aws)), FakeContext())
    assert dispatched == {"batchItemFailures": []}
    [message] = all_messages(store, account["account_id"], reference_id)
    assert message.status == "delivered"


def ninebits_upstream(aws: dict[str, str]) -> None:
    """A 9bits upstream whose callbacks are verified by our token (its webhook secret we do not have)."""
    configure(
        aws, "ninebits", {"type": "ninebits", "url": "http://127.0.0.1:2081", "token": "t", "webhook_token": TOKEN}
    )


def ninebits_callback(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """A verified 9bits post of `kind` (`dlr`, `inbound`)."""
    event = jasmin_dlr(TOKEN)
    event["rawPath"] = event["requestContext"]["http"]["path"] = f"/callbacks/ninebits/{kind}"
    event["pathParameters"] = {"provider": "ninebits"}
    event["rawQueryString"] = ""
    event["queryStringParameters"] = {}
    event["headers"] = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}
    event["body"] = json.dumps(body)
    return event


def test_reports_whose_reference_is_no_reference_of_ours_however_long_are_acknowledged_while_held(aws):
    from sms_gateway.adapters.dynamodb_delivery import upstream_link_key
    from sms_gateway.bootstrap import gateway

    # Given a 9bits upstream (its callbacks verified by our token)
    configure(
        aws, "ninebits", {"type": "ninebits", "url": "http://127.0.0.1:2081", "token": "t", "webhook_token": TOKEN}
    )
    webhook = load_function("webhook")
    # When it reports, for an id no message is linked to, with a `ref_id` that is none of ours and 100 KB long (each
    # report its own: held one by one until the id is linked)
    statuses = ["submitted", "delivered", "failed", "expired", "rejected"]
    answers = [
        webhook.handler(
            ninebits_callback("dlr", {"reference_id": "their-1", "ref_id": f"{i}" * 100_000, "status": status}),
            FakeContext(),
        )["statusCode"]
        for i, status in enumerate(statuses)
    ]
    # Then each is acknowledged (a 5xx is posted again, for ever)
    assert answers == [200] * len(statuses)
    # And each report is held, without that reference
    store = gateway().store
    item = store.client.get_item(TableName=store.table_name, Key=upstream_link_key("ninebits", "their-1"))["Item"]
    held = [json.loads(entry["S"]) for entry in item["held"]["L"]]
    assert [entry.get("client_ref") for entry in held] == [None] * len(statuses)


def test_an_inbound_sms_whose_upstream_names_its_network_at_any_length_is_stored_and_forwarded(aws, account):
    from sms_gateway.bootstrap import gateway
    from sms_gateway_tools.admin import set_sender

    # Given a 9bits upstream delivering the short code 48974's SMS
    ninebits_upstream(aws)
    set_sender(account_id=account["account_id"], sender="48974", inbound_upstreams=["ninebits"])
    webhook = load_function("webhook")
    # When it posts a reply from a number whose network the number plan cannot tell (a US number), naming a network
    # far longer than any network's name
    body = {
        "type": "two-way sms",
        "telco": "verizon" * 30_000,
        "from": "12125550123",
        "to": "48974",
        "message": "YES please",
        "session_id": "s-1",
        "sent_date": "2024-01-02T23:50:37.000000Z",
    }
    answer = webhook.handler(ninebits_callback("inbound", body), FakeContext())
    # Then the SMS is taken (a 5xx is posted again, for ever) and stored with all it says, without that network
    assert answer["statusCode"] == 200, answer
    [stored] = gateway().store.list_inbounds(account["account_id"])[0]
    assert (stored.msisdn, stored.to, stored.text, stored.session_id) == ("+12125550123", "48974", "YES please", "s-1")
    assert stored.telco is None
