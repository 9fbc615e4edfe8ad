"""Listings whose answers grow with stored text, through the real `api` handler on moto: each page stays within the
answer budget (docs/dialects/9bits.md, "Page sizes"), whatever the texts listed, and paging still lists everything
once. Lambda refuses a synchronous answer over 6 MB (the invocation fails and API Gateway answers the client 5xx, on
every try of that page); the budget leaves room for headers and Lambda's own framing."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import FakeContext, load_function
from tests.integration.test_batches_dialect import request

Api = Callable[[dict[str, Any]], dict[str, Any]]
# The whole answer as the handler gives it to Lambda (body and headers, the body written as a JSON string).
ANSWER_BUDGET = 5 * 1024 * 1024
SENDER = "+2348020000000"
# The longest text an SMS can carry: 255 parts (MAX_PARTS_LIMIT) of 67 UCS-2 characters, here in Devanagari (3 bytes
# each in UTF-8, `\uXXXX` in the JSON answers write). About 100 KB in an answer.
LONGEST_SMS = ("नमस्ते दुनिया " * 1300)[: 255 * 67]
START = datetime(2026, 1, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
def api(aws: dict[str, str]) -> Api:
    module = load_function("api")
    return lambda event: module.handler(event, FakeContext())


def answer_size(response: dict[str, Any]) -> int:
    """The bytes Lambda returns for this answer: the handler's result as JSON (what the runtime serialises)."""
    return len(json.dumps(response).encode())


def pages(api: Api, token: str, path: str, cursor_name: str, **query: str) -> list[dict[str, Any]]:
    """Every page of a listing, following its cursor; each within the answer budget."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(200):
        response = api(request(token, "GET", path, None, {**query, **({"cursor": cursor} if cursor else {})}))
        assert response["statusCode"] == 200, response["body"][:500]
        size = answer_size(response)
        assert size <= ANSWER_BUDGET, f"a page of {path} is {size} bytes, over the {ANSWER_BUDGET} budget"
        body = json.loads(response["body"])
        found.append(body)
        cursor = body[cursor_name]
        if cursor is None:
            return found
    raise AssertionError("the cursor never ended")


def longest_sms(account_id: str, n: int) -> Any:
    """The `n`th of a customer's inbound SMS, each the longest an SMS can be, received a second apart."""
    from sms_gateway.domain.ids import IdGenerator
    from sms_gateway.domain.models import StoredInbound, iso

    at = START + timedelta(seconds=n)
    inbound_id = IdGenerator().new_id(int(at.timestamp() * 1000))
    return StoredInbound(
        inbound_id=inbound_id,
        account_id=account_id,
        upstream="simulator",
        msisdn=SENDER,
        telco="airtel",
        to="48974",
        text=LONGEST_SMS,
        session_id=str(inbound_id),
        received_at=iso(at),
    )


def test_the_inbox_of_one_number_s_longest_sms_answers_in_pages_within_the_budget(aws, account, api):
    from sms_gateway.bootstrap import gateway

    # Given 100 inbound SMS from one customer, each the longest an SMS can be (255 parts of a 3-byte script)
    stored = [longest_sms(account["account_id"], n) for n in range(100)]
    for inbound in stored:
        assert gateway().store.save_inbound(inbound)
    # When the client lists that customer's SMS, a hundred to a page (the most the listing takes)
    listed = pages(api, account["token"], "/ng/v1/inbounds", "next_cursor", number=SENDER, limit="100")
    # Then every page answered within the budget (pages()), and paging listed each SMS once, newest first, whole
    entries = [entry for page in listed for entry in page["data"]]
    assert [entry["id"] for entry in entries] == [f"in_{inbound.inbound_id}" for inbound in reversed(stored)]
    assert {entry["message"] for entry in entries} == {LONGEST_SMS}
    assert len(listed) > 1


def test_failed_notifications_of_the_longest_sms_answer_in_pages_within_the_budget(aws, account, api):
    from sms_gateway.bootstrap import gateway
    from sms_gateway.logic.inbound import inbound_notification
    from sms_gateway.ports import WebhookFailure

    # Given a client webhook that was down while 100 of the longest SMS came in: each notification dead
    notifications = [inbound_notification(longest_sms(account["account_id"], n)) for n in range(100)]
    for notification in notifications:
        at = notification["payload"]["sent_date"]
        failure = WebhookFailure(
            account_id=account["account_id"],
            notification_id=notification["id"],
            kind=notification["kind"],
            url="https://client.example.com/sms",
            state="dead",
            attempts=8,
            last_error="client webhook answered 503",
            last_status_code=503,
            first_failed_at=at,
            last_attempt_at=at,
            notification=notification,
        )
        assert gateway().store.save_webhook_failure(failure, only_from=frozenset({"retrying", "resent", "dead"}))
    # When the client lists its failed notifications as the docs show it (the default page of 100)
    listed = pages(api, account["token"], "/ng/v1/webhooks/failures", "next_cursor")
    # Then every page answered within the budget (pages()), and paging listed each once, newest first, whole
    entries = [entry for page in listed for entry in page["data"]]
    assert [entry["id"] for entry in entries] == [notification["id"] for notification in reversed(notifications)]
    assert {entry["payload"]["message"] for entry in entries} == {LONGEST_SMS}
    assert len(listed) > 1
