"""Input that becomes part of a DynamoDB key stays within DynamoDB's limits, or is answered without reaching it.

DynamoDB refuses a partition key over 2048 bytes, a sort key over 1024 (ValidationException, "Size of hashkey has
exceeded the maximum size limit of2048 bytes"), on reads as on writes (docs: Service, account, and table quotas in
Amazon DynamoDB, "Partition key value"). moto enforces it on writes only; `keys_limited_as_dynamodb` makes this
test's reads behave as DynamoDB's."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import FakeContext, load_function
from tests.integration.test_callback_acknowledgements import (
    TOKEN,
    configure,
    jasmin_dlr,
    kannel_delivering_inbound_for,
    kannel_inbound_event,
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
