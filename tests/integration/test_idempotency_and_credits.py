"""Idempotent sends and credit arithmetic through the 9bits dialect on moto."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from tests.integration.test_send_path import balance, queued_records, send_event


@pytest.fixture
def api(aws: dict[str, str]):
    from tests.integration.test_send_path import FakeContext, load_function

    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


def with_key(event: dict[str, Any], key: str) -> dict[str, Any]:
    event["headers"]["idempotency-key"] = key
    return event


def make_account(credits: int, sender: str = "48974") -> dict[str, Any]:
    from sms_gateway_tools.admin import create_account

    return create_account(name="Idem", senders=[sender], credits=credits)


def test_a_repeat_with_the_same_idempotency_key_returns_the_first_answer_and_sends_once(aws, api):
    account = make_account(10)
    first = api(with_key(send_event(account["token"]), "order-42"))
    second = api(with_key(send_event(account["token"]), "order-42"))
    assert first["statusCode"] == second["statusCode"] == 200
    assert json.loads(second["body"]) == json.loads(first["body"])
    assert balance(account["account_id"]) == 9
    assert len(queued_records(aws)) == 1


def test_the_same_key_with_a_different_body_is_refused_and_changes_nothing(aws, api):
    account = make_account(10)
    api(with_key(send_event(account["token"]), "order-43"))
    other = send_event(account["token"], {"from": "48974", "to": "2348030000000", "message": "another text"})
    answer = api(with_key(other, "order-43"))
    assert answer["statusCode"] == 409
    assert "different request" in json.loads(answer["body"])["message"]
    assert balance(account["account_id"]) == 9


def test_the_same_ref_id_within_a_day_is_sent_once(aws, api):
    account = make_account(10)
    body = {"from": "48974", "to": "2348020000000", "message": "hi", "ref_id": "873ghf8749956778gf5"}
    first = api(send_event(account["token"], body))
    second = api(send_event(account["token"], body))
    assert json.loads(first["body"])["reference_id"] == json.loads(second["body"])["reference_id"]
    assert balance(account["account_id"]) == 9


def test_keys_are_per_account(aws, api):
    one, two = make_account(10), make_account(10, sender="48975")
    first = api(with_key(send_event(one["token"]), "shared-key"))
    other_body = {"from": "48975", "to": "2348020000000", "message": "When was the last time you went to the cinema?"}
    second = api(with_key(send_event(two["token"], other_body), "shared-key"))
    assert json.loads(first["body"])["reference_id"] != json.loads(second["body"])["reference_id"]
    assert balance(one["account_id"]) == balance(two["account_id"]) == 9


def test_a_refused_request_does_not_burn_its_key(aws, api):
    account = make_account(0)
    refused = api(with_key(send_event(account["token"]), "retry-me"))
    assert refused["statusCode"] == 402
    from sms_gateway.bootstrap import gateway

    gateway().store.refund_credits(account["account_id"], 5)  # a top-up
    assert api(with_key(send_event(account["token"]), "retry-me"))["statusCode"] == 200


def test_a_wrong_content_type_is_a_415_and_changes_nothing(aws, api):
    account = make_account(10)
    event = send_event(account["token"])
    event["headers"]["content-type"] = "text/plain"
    answer = api(event)
    assert answer["statusCode"] == 415
    assert "application/json" in json.loads(answer["body"])["message"]
    assert balance(account["account_id"]) == 10


def test_two_requests_racing_for_the_last_credit_exactly_one_wins(aws, api, serialised_moto_updates):
    # Given an account with one credit left
    account = make_account(1)
    statuses: list[int] = []
    start = threading.Barrier(2)

    def send(number: str) -> None:
        event = send_event(account["token"], {"from": "48974", "to": number, "message": "last one"})
        start.wait()
        statuses.append(api(event)["statusCode"])

    # When two sends arrive at once
    threads = [threading.Thread(target=send, args=(n,)) for n in ("2348020000000", "2348030000000")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # Then exactly one is accepted, the other refused for credits, and the balance is zero, not negative
    assert sorted(statuses) == [200, 402]
    assert balance(account["account_id"]) == 0
    assert len(queued_records(aws)) == 1
