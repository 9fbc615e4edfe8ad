"""NaN, Infinity and -Infinity in a request body (Python's json extension, not JSON: RFC 8259 has no such numbers):
refused as not valid JSON in every dialect, as any other malformed body, and nothing written (the real api handler
on moto)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import FakeContext, load_function
from tests.integration import test_session_key_dialect as sessionkey
from tests.integration import test_shortcode_dialect as shortcode
from tests.integration.test_batches_dialect import request
from tests.integration.test_send_path import balance, queued_records, send_event
from tests.stored_accounts import stored

Api = Callable[[dict[str, Any]], dict[str, Any]]
CONSTANTS = ["NaN", "Infinity", "-Infinity"]


@pytest.fixture
def api(aws: dict[str, str]) -> Api:
    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


def with_body(event: dict[str, Any], body: str) -> dict[str, Any]:
    event["body"] = body
    return event


def ninebits_send(api: Api, account: dict[str, Any], constant: str) -> tuple[int, str]:
    body = f'{{"from": "48974", "to": "2348020000000", "message": "hi", "ref_id": {constant}}}'
    response = api(with_body(send_event(account["token"]), body))
    return response["statusCode"], json.loads(response["body"])["message"]


def batch_send(api: Api, account: dict[str, Any], constant: str) -> tuple[int, str]:
    body = f'{{"from": "48974", "to": ["2348020000000", {constant}], "body": "hi"}}'
    response = api(with_body(send_event(account["token"]), body))
    return response["statusCode"], json.loads(response["body"])["message"]


def shortcode_send(api: Api, account: dict[str, Any], constant: str) -> tuple[int, str]:
    fields = json.loads(shortcode.post_event(account)["body"])
    body = json.dumps(fields)[:-1] + f', "timeToSend": {constant}}}'
    answer = shortcode.answer(api(with_body(shortcode.post_event(account), body)))
    # The family answers HTTP 200 with its code in the body: 1009 for any malformed body
    assert (answer["response-code"], answer["response-description"]) == (1009, "Unsupported data type"), answer
    return 400, answer.get("response-details", "")


def sessionkey_send(api: Api, account: dict[str, Any], constant: str) -> tuple[int, str]:
    keys = sessionkey.log_in(api, account)
    body = json.dumps(sessionkey.seed_body())[:-1] + f', "returnCredits": {constant}}}'
    response = api(sessionkey.sms_event(keys, body))
    answer = sessionkey.answer(response)
    assert answer["result"] == "KO", answer
    return response["statusCode"], answer["error"]


def settings_change(api: Api, account: dict[str, Any], constant: str) -> tuple[int, str]:
    body = f'{{"inbound_url": "https://client.example/in", "rotate_token": {constant}}}'
    response = api(with_body(request(account["token"], "PUT", "/ng/v1/settings/webhooks", {}), body))
    return response["statusCode"], json.loads(response["body"])["message"]


DIALECTS = {
    "9bits": ninebits_send,
    "batches": batch_send,
    "shortcode": shortcode_send,
    "sessionkey": sessionkey_send,
    "account-api": settings_change,
}


@pytest.mark.parametrize("constant", CONSTANTS)
@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_a_body_with_nan_or_infinity_is_not_valid_json_in_every_dialect(aws, account, api, dialect, constant):
    before = stored(account["account_id"])
    # Given a body that would be JSON but for one of Python's non-standard number constants
    # When it is sent in the dialect
    status, error = DIALECTS[dialect](api, account, constant)
    # Then it is refused in the dialect's shape as the malformed JSON it is, naming the constant
    assert status == 400
    assert "not valid JSON" in error, error
    assert constant.lstrip("-") in error, error
    # And nothing was written: the account, its credits, its queues
    assert stored(account["account_id"]) == before
    assert balance(account["account_id"]) == 100
    assert queued_records(aws) == []
