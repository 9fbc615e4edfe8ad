"""A failure no route expected (an AWS error a route does not handle, a bug) still answers in the caller's dialect:
the family's internal error, naming the request id it is logged under, where Lambda would otherwise fail the
invocation and the HTTP API answer its bare `{"message": "Internal Server Error"}` that no vendor's client reads."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import FakeContext
from tests.integration.test_operations_metrics import log_lines_at
from tests.security_stack import Answer, Gateway, Tenant, log_in, module_fixtures, populate, stored_state

aws, gateway = module_fixtures()
NUMBER = "2348020000001"


@pytest.fixture(scope="module")
def tenant(gateway: Gateway) -> Tenant:
    return populate(gateway, "Unlucky", "48974")


def throttled(*args: Any, **kwargs: Any) -> Any:
    raise ClientError(
        {"Error": {"Code": "ThrottlingException", "Message": "Rate of requests exceeds the allowed throughput."}},
        "GetItem",
    )


def ninebits_send(gateway: Gateway, tenant: Tenant) -> Answer:
    return gateway.request(
        "POST",
        "/ng/v1/sendsms",
        headers={"authorization": f"Bearer {tenant.account['token']}"},
        body={"from": "48974", "to": NUMBER, "message": "hello"},
    )


def shortcode_send(gateway: Gateway, tenant: Tenant) -> Answer:
    account = tenant.account
    body = {"apikey": account["apikey"], "partnerID": account["partner_id"], "message": "hello"}
    return gateway.request("POST", "/api/services/sendsms", body={**body, "shortcode": "48974", "mobile": NUMBER})


def sessionkey_send(gateway: Gateway, tenant: Tenant) -> Answer:
    body = {"message": "hello", "message_type": "N", "recipient": [NUMBER], "sender": "48974"}
    return gateway.request("POST", "/sms", headers=log_in(gateway, tenant.account), body=body)


def failure_of(answer: Answer) -> str:
    """What each family says of the failure (the shortcode family answers 200 with its code, as it does for all)."""
    body = answer.json
    if "response-code" in body:
        assert (answer.status, body["response-code"]) == (200, 4090), answer
        assert body["response-description"] == "Internal Error. Try again after 5 minutes"
        return str(body["response-details"])
    assert answer.status == 500, answer
    if "result" in body:
        assert body["result"] == "KO"
        return str(body["error"])
    assert body["status_code"] == 500
    return str(body["message"])


SENDS: dict[str, Callable[[Gateway, Tenant], Answer]] = {
    "9bits": ninebits_send,
    "shortcode": shortcode_send,
    "session key": sessionkey_send,
}


@pytest.mark.parametrize("dialect", list(SENDS))
def test_a_send_that_fails_unexpectedly_is_answered_in_its_dialect_and_changes_nothing(
    aws, gateway, tenant, dialect, monkeypatch, capsys
):
    from sms_gateway import bootstrap
    from sms_gateway.adapters.dynamodb import DynamoStore

    send = SENDS[dialect]
    if dialect == "session key":
        log_in(gateway, tenant.account)  # the session's own writes, before the state is taken
    before = stored_state(aws, ignoring=("SESSION#", "LOGIN#"))
    capsys.readouterr()
    # Given DynamoDB throttling the read of the price table, which no route handles (read afresh: the container's
    # settings cache forgotten)
    monkeypatch.setattr(DynamoStore, "price_table", throttled)
    bootstrap.gateway().settings_cache.clear()
    # When a client sends
    with log_lines_at("INFO") as logged:
        answer = send(gateway, tenant)
    # Then it gets its family's internal error, naming the request id, and saying how to retry safely
    said = failure_of(answer)
    assert f"request id {FakeContext.aws_request_id}" in said
    assert "Idempotency-Key" in said
    # And nothing of the AWS error reaches the client
    assert "Throttling" not in answer.text and "Traceback" not in answer.text
    # And the failure is logged at ERROR with its traceback and counted for the error-rate alarm
    (failed,) = [line for line in logged if line.get("message") == "request failed unexpectedly"]
    assert failed["level"] == "ERROR" and "ThrottlingException" in failed["exception"]
    metric_lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert any(line.get("RequestsFailed") == [1.0] for line in metric_lines)
    # And nothing was stored, charged or queued
    monkeypatch.undo()
    assert stored_state(aws, ignoring=("SESSION#", "LOGIN#")) == before
