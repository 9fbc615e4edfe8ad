"""An upstream's JSON that holds a lone UTF-16 surrogate: a `\\ud800` escape without its pair, which Python's json
reads into a str that cannot be written as UTF-8 (DynamoDB, SQS and every webhook refuse it). Its callback was a 5xx,
posted again for ever, and an id in its answer to a submit could not be stored. Each is read with U+FFFD in its place,
as a body in bytes that cannot be read is (`dialects.common.callback_text`): the SMS and reports are not lost.

The client-facing send routes refuse such a body with a 400 (tests/unit/test_json_body.py, tests/e2e/
test_bad_requests.py): a client can send its text again, an upstream cannot."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import FakeContext, load_function
from tests.integration.test_dynamodb_limits import ninebits_callback, ninebits_upstream


def posted(event: dict[str, Any]) -> dict[str, Any]:
    """The webhook function's answer; an invocation that raised is what API Gateway answers then: a 500."""
    try:
        return load_function("webhook").handler(event, FakeContext())
    except Exception as error:
        return {"statusCode": 500, "body": repr(error)}


def test_an_inbound_sms_whose_json_holds_a_lone_surrogate_is_stored_with_a_replacement_character(aws, account):
    from sms_gateway.bootstrap import gateway
    from sms_gateway_tools.admin import set_sender

    # Given a 9bits upstream delivering the short code 48974's SMS
    ninebits_upstream(aws)
    set_sender(account_id=account["account_id"], sender="48974", inbound_upstreams=["ninebits"])
    # When it posts a reply whose text holds a `\ud800` escape without its pair (json.dumps writes that escape)
    body = {"from": "2348020000000", "to": "48974", "message": "hi \ud800 there", "sent_date": "2024-01-02"}
    event = ninebits_callback("inbound", body)
    answer = posted(event)
    # Then the SMS is taken (a 5xx is posted again, for ever) and stored with U+FFFD where the surrogate was
    assert answer["statusCode"] == 200, answer
    [stored] = gateway().store.list_inbounds(account["account_id"])[0]
    assert stored.text == "hi \ufffd there"
    # And the same post again is the same SMS, stored once
    assert posted(event)["statusCode"] == 200
    assert len(gateway().store.list_inbounds(account["account_id"])[0]) == 1


def test_a_delivery_report_whose_id_holds_a_lone_surrogate_is_acknowledged(aws):
    from sms_gateway.adapters.dynamodb_delivery import upstream_link_key
    from sms_gateway.bootstrap import gateway

    # Given a 9bits upstream
    ninebits_upstream(aws)
    # When it reports for an id of theirs that holds a `\udc00` escape without its pair
    answer = posted(ninebits_callback("dlr", {"reference_id": "their-\udc00", "status": "delivered"}))
    # Then it is acknowledged (a 5xx is posted again, for ever) and held under that id read with U+FFFD, as the
    # id of a message they took is read from their answer (below)
    assert answer["statusCode"] == 200, answer
    store = gateway().store
    assert "Item" in store.client.get_item(
        TableName=store.table_name, Key=upstream_link_key("ninebits", "their-\ufffd")
    )


def test_an_id_in_a_submit_answer_holding_a_lone_surrogate_is_read_as_the_callbacks_read_it() -> None:
    from tests.integration.test_provider_ninebits import provider, submit_request

    # Given 9bits answering a submit with an id holding a `\ud800` escape without its pair
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b'{"status_code": 200, "reference_id": "their-\\ud800"}')

    # When the message is submitted
    result = asyncio.run(provider(handler).submit(submit_request()))
    # Then the id is text that can be stored, the one its delivery reports are held and found by (above)
    assert result.upstream_message_id == "their-\ufffd"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_an_id_in_a_submit_answer_in_utf16_or_utf32_holding_a_lone_surrogate_is_read_as_in_utf8(encoding: str) -> None:
    from tests.integration.test_provider_ninebits import provider, submit_request

    # Given 9bits answering a submit in JSON written in UTF-16 or UTF-32 (which JSON readers, Python's among them, take
    # by its zero bytes or byte-order mark), with an id holding a `\ud800` escape without its pair
    answer = '{"status_code": 200, "reference_id": "their-\\ud800"}'.encode(encoding)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=answer)

    # When the message is submitted
    result = asyncio.run(provider(handler).submit(submit_request()))
    # Then the id is read as the same answer in UTF-8 is: text that can be stored, not one no store takes
    assert result.upstream_message_id == "their-\ufffd"
